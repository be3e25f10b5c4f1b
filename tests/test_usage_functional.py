"""Usage accounting on real processes: edges in every region ledger each admitted request's tokens (the
answer's ``usage``, or a stream's events counted as they flow) per tenant, model, region and hour, write
them in batches to the Redis primary, and the admin API, ``meridian ctl usage`` and the edges' Prometheus
counters report them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.acl import CONTROL_PLANE
from meridian import cli
from meridian.capacity_io import read_store
from regionsim.model import Faults
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, auth=True, sim_kwargs={"ttft_ms": 1.0})
    try:
        yield f
    finally:
        await f.close()


async def call(fleet: Fleet, edge: str, key: str, client: str, **body: Any) -> tuple[int, int, int]:
    """One chat request: (status, prompt tokens, completion tokens) as the client saw them (a stream
    without a usage chunk: its content events)."""
    payload = {"model": "sim-llm", "messages": [{"role": "user", "content": "count me"}], **body}
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP[client]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url(edge) + "v1/chat/completions", json=payload, headers=headers) as r,
    ):
        if not body.get("stream"):
            usage = (await r.json())["usage"]
            return r.status, usage["prompt_tokens"], usage["completion_tokens"]
        events = [line[6:] for line in (await r.text()).splitlines() if line.startswith("data: {")]
        last = json.loads(events[-1])
        if last.get("usage"):
            return r.status, last["usage"]["prompt_tokens"], last["usage"]["completion_tokens"]
        return r.status, -1, len(events)


async def test_usage_is_ledgered_per_tenant_model_region_and_hour_and_reported(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, key = await fleet.tenant_key({"tpm": 1_000_000})
    seen = [
        await call(fleet, "us-east-1", key, "new_york", max_tokens=3),
        await call(fleet, "eu-west-1", key, "london", max_tokens=5),
        await call(fleet, "eu-west-1", key, "london", max_tokens=7),
        await call(
            fleet,
            "us-east-1",
            key,
            "new_york",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        ),
        await call(
            fleet,
            "eu-west-1",
            key,
            "london",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        ),
        await call(fleet, "eu-west-1", key, "london", max_tokens=9, stream=True),  # no usage: events counted
    ]
    assert {status for status, _, _ in seen} == {200}
    exact = [s for s in seen if s[1] >= 0]
    prompt = sum(p for _, p, _ in exact)
    completion = sum(c for _, _, c in seen)

    async def written() -> bool:
        status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
        return status == 200 and body["totals"]["requests"] == 6

    await wait_for(written, timeout=5, what="the edges to write their usage batches")
    _, report = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
    by_region = {r["region"]: r for r in report["rows"]}
    assert set(by_region) == {"us-east-1", "eu-west-1"} and {r["model"] for r in report["rows"]} == {
        "sim-llm"
    }
    assert by_region["us-east-1"]["requests"] == 2 and by_region["eu-west-1"]["requests"] == 4
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat().replace("+00:00", "Z")
    assert {r["hour"] for r in report["rows"]} <= {hour, report["start"]}
    assert report["totals"]["completion_tokens"] == completion  # exact, and the stream's events counted
    estimated = report["totals"]["prompt_tokens"] - prompt  # the stream without usage: its prompt estimate
    assert 1 <= estimated <= 100 and report["totals"]["errors"] == 0

    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url("eu-west-1") + "metrics") as r:
        text = await r.text()
    eu_completion = sum(c for c in (seen[1][2], seen[2][2], seen[4][2], seen[5][2]))
    assert (
        f'meridian_edge_tenant_tokens_total{{kind="completion",tenant="{tenant}"}} {eu_completion}.0' in text
    )
    assert f'meridian_edge_tenant_requests_total{{outcome="ok",tenant="{tenant}"}} 4.0' in text

    # the same traffic per region and minute, all tenants together: the history capacity planning reads
    samples = await asyncio.to_thread(
        read_store, fleet.primary.url_for(CONTROL_PLANE), fleet.topology.names, days=0.02, now=time.time()
    )
    assert sum(x.requests for x in samples) == 6 and sum(x.completion_tokens for x in samples) == completion
    assert {x.region for x in samples} == {"us-east-1", "eu-west-1"}

    monkeypatch.setenv("MERIDIAN_ADMIN_URL", fleet.admin_url)
    monkeypatch.setenv("MERIDIAN_TOKEN", fleet.viewer_token)  # reading usage needs no more than a viewer
    assert await asyncio.to_thread(cli.main, ["ctl", "usage", tenant]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1:] == [
        "6",
        str(report["totals"]["prompt_tokens"]),
        str(completion),
        "0",
        "0.0000",
    ]  # no prices


async def test_usage_queries_are_checked(fleet: Fleet) -> None:
    tenant, _ = await fleet.tenant_key()
    status, body = await fleet.admin(
        "GET", f"/v1/tenants/{tenant}/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"
    )
    assert status == 422 and body["fields"] == ["from"] and "before" in body["detail"]
    status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage?from=2025-01-01T00:00:00Z")
    assert status == 422 and "31 days" in body["detail"]
    status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage?from=yesterday")
    assert status in (400, 422) and "from" in json.dumps(body)
    status, _ = await fleet.admin("GET", "/v1/tenants/t-nobody/usage")
    assert status == 404
    status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
    assert status == 200 and body["rows"] == [] and body["totals"]["requests"] == 0


async def test_the_tenants_using_most_are_ranked_by_tokens_requests_or_spend(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tenants: many short requests, few long ones, none at all. By requests the first leads, by
    tokens the second; the idle one is left out; ``ctl usage --top`` prints the same ranking."""
    chatty, chatty_key = await fleet.tenant_key(name="chatty")
    _, wordy_key = await fleet.tenant_key(name="wordy")
    await fleet.tenant_key(name="idle")
    for _ in range(4):
        assert (await call(fleet, "eu-west-1", chatty_key, "london", max_tokens=1))[0] == 200
    for _ in range(2):
        assert (await call(fleet, "eu-west-1", wordy_key, "london", max_tokens=40))[0] == 200

    async def ranked(by: str) -> list[str]:
        status, body = await fleet.admin("GET", f"/v1/usage/top?by={by}&n=5")
        assert status == 200, body
        return [u["name"] for u in body["tenants"]]

    async def written() -> bool:
        _, body = await fleet.admin("GET", "/v1/usage/top?by=requests")
        return bool(sum(u["totals"]["requests"] for u in body["tenants"]) >= 6)

    await wait_for(written, timeout=5, what="the edges to write their usage batches")
    assert await ranked("requests") == ["chatty", "wordy"]
    assert await ranked("tokens") == ["wordy", "chatty"]
    status, body = await fleet.admin("GET", "/v1/usage/top?by=fame")
    assert status == 422 and body["fields"] == ["by"], body
    monkeypatch.setenv("MERIDIAN_ADMIN_URL", fleet.admin_url)
    monkeypatch.setenv("MERIDIAN_TOKEN", fleet.viewer_token)
    assert await asyncio.to_thread(cli.main, ["ctl", "usage", "--top", "1", "--by", "requests"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[2].split()[:3] == [chatty, "chatty", "4"], lines
    assert all(len(line) <= 100 for line in lines)


async def test_an_edge_that_stops_writes_its_last_usage_batch(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The writer's batches are a minute apart here: what the edge ledgered since its last one is written
    by its stop, after its background tasks have ended."""
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        regions=("eu-west-1",),
        sim_kwargs={"ttft_ms": 1.0},
        edge_overrides={"observation_interval_s": 60.0},
    )
    try:
        tenant, key = await f.tenant_key({"tpm": 1_000_000})
        assert (await call(f, "eu-west-1", key, "london", max_tokens=4))[0] == 200
        _, before = await f.admin("GET", f"/v1/tenants/{tenant}/usage")
        assert before["totals"]["requests"] == 0  # not written yet: the next batch is a minute away
        await f.edges["eu-west-1"].close()
        _, after = await f.admin("GET", f"/v1/tenants/{tenant}/usage")
        assert after["totals"]["requests"] == 1 and after["totals"]["completion_tokens"] == 4
    finally:
        await f.close()


async def test_a_stream_another_replica_went_on_with_is_ledgered_as_served_with_every_token(
    fleet: Fleet,
) -> None:
    """A region broke the stream off after two tokens and another replica continued it: the client got one
    whole answer, so the ledger counts it served (not an error) with the usage the client was told (found by
    the fault campaign's engine-cut: each continued stream was ledgered as an error)."""
    tenant, key = await fleet.tenant_key({"tpm": 1_000_000})
    payload = {"model": "sim-llm", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 6}
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    url = fleet.edge_url("eu-west-1") + "v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=payload, headers=headers) as r:
            assert r.status == 200
            cutting = r.headers["X-Meridian-Replica"]  # where this prompt goes (prefix affinity)
        fleet.sim("eu-west-1", cutting).faults = Faults(cut_after_tokens=2)
        stream = {**payload, "stream": True, "stream_options": {"include_usage": True}}
        async with s.post(url, json=stream, headers=headers) as r:
            assert r.status == 200
            events = [
                json.loads(line[6:]) for line in (await r.text()).splitlines() if line.startswith("data: {")
            ]
    assert fleet.sim("eu-west-1", cutting).stats.requests == 2  # it was cut there
    usage = events[-1]["usage"]
    assert not any("error" in e for e in events) and usage["completion_tokens"] == 6

    async def written() -> bool:
        status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
        return status == 200 and body["totals"]["requests"] == 2

    await wait_for(written, timeout=5, what="the edges to write their usage batches")
    _, report = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
    assert report["totals"]["errors"] == 0
    assert report["totals"]["completion_tokens"] == 6 + 6


async def test_an_engines_error_relayed_to_the_client_charges_no_tokens(fleet: Fleet) -> None:
    """Both engines of the region answer 500 (the request breaks them): the client gets the engine's 500,
    the ledger an error with no tokens and nothing spent — an error before any token is not billed."""
    tenant, key = await fleet.tenant_key({"tpm": 1_000_000})
    for rep in fleet.sims["eu-west-1"]:
        fleet.sim("eu-west-1", rep).faults = Faults(error_rate=1.0, error_status=500)
    payload = {"model": "sim-llm", "messages": [{"role": "user", "content": "break it"}], "max_tokens": 6}
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=payload, headers=headers) as r,
    ):
        assert r.status == 500 and r.headers["X-Meridian-Attempts"] == "2"

    async def written() -> bool:
        status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
        return status == 200 and body["totals"]["requests"] == 1

    await wait_for(written, timeout=5, what="the edge to write its usage batch")
    _, report = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
    totals = report["totals"]
    assert (totals["errors"], totals["prompt_tokens"], totals["completion_tokens"]) == (1, 0, 0)
