"""Bounded input as shipped (issue: "durability and least privilege"): an open-world model name past 256
characters or with control characters is 400 naming ``model`` and stores nothing; usage ranges near the
calendar's limits are 422 naming the field, never a 500; control characters in names never reach a
terminal through ``meridian ctl``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meridian import cli
from tests.fleet import Fleet, ServerFactory, start_fleet
from tests.geodb import CLIENT_IP


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",), sim_kwargs={"ttft_ms": 1.0}
    )
    try:
        yield f
    finally:
        await f.close()


@pytest.mark.parametrize("model", ["m" * 257, "evil\x1b[2Jmodel", "two words", ""])
async def test_an_open_world_model_name_out_of_bounds_is_400_and_stores_nothing(
    fleet: Fleet, model: str
) -> None:
    _, key = await fleet.tenant_key()
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=hdrs) as r,
    ):
        answer = await r.json()
    assert r.status == 400 and answer["error"]["param"] == "model", answer
    edge = fleet.edges["eu-west-1"].edge
    assert edge.ledger is not None and not edge.ledger.rows  # nothing ledgered, nothing to store


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=0001-01-01T00:00:00Z", "from"),  # 24 hours before: beyond the calendar
        ("to=9999-12-31T23:59:59Z", "to"),
        ("to=0001-01-01T00:00:00%2B05:00", "to"),  # its UTC is before the year 1
    ],
)
async def test_usage_ranges_near_the_calendars_limits_are_422_naming_the_field(
    fleet: Fleet, query: str, field: str
) -> None:
    tenant, _ = await fleet.tenant_key()
    status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage?{query}")
    assert status == 422 and body["fields"] == [field], body


async def test_control_characters_in_names_never_reach_the_terminal(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = await fleet.admin("POST", "/v1/tenants", body={"name": "t\x1b]0;pwned\x07"})
    assert status == 201
    monkeypatch.setenv("MERIDIAN_ADMIN_URL", fleet.admin_url)
    monkeypatch.setenv("MERIDIAN_TOKEN", fleet.viewer_token)
    for verb in (["ctl", "tenants"], ["ctl", "regions"], ["ctl", "pools"]):
        await asyncio.to_thread(cli.main, verb)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
