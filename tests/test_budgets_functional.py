"""Spend budgets on a fleet of four edges under the shipped Redis ACL users: 100 concurrent streamed requests
for a tenant whose budget covers about 30 of them overspend it by at most one request's maximum cost, the
rest are refused 429 ``budget_exceeded`` in OpenAI's shape, and the spend recorded (budget, usage API,
Prometheus) is the answers' usage at the catalog's prices; a steady tenant's requests do not wait for the
primary (leases and purses held ahead)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.admission.limits import LEASE_TTL_S, prompt_tokens
from fleet.models import cost_nusd
from meridian import cli
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

MODEL = "llama-3.1-8b-instruct"  # regions.yaml: $0.10 per million prompt tokens, $0.20 per million completion
PRICES = (0.10, 0.20)
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 100,
    "stream": True,
    "stream_options": {"include_usage": True},
}
CLIENTS = ("london", "new_york", "california", "singapore")


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        catalog=True,
        sim_kwargs={"ttft_ms": 50.0, "per_token_ms": 2.0},
    )
    try:
        yield f
    finally:
        await f.close()


def most_nusd() -> int:
    """What one request may cost: its prompt's estimate (the edge reads the body) and all 100 tokens."""
    return cost_nusd(prompt_tokens(len(json.dumps(BODY).encode())), 100, *PRICES)


async def stream(s: aiohttp.ClientSession, fleet: Fleet, key: str, i: int) -> tuple[int, Any]:
    """One streamed request through the ``i``-th edge: its status and its usage (or its error body)."""
    region = list(fleet.edges)[i % len(fleet.edges)]
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP[CLIENTS[i % 4]]}
    async with s.post(fleet.edge_url(region) + "v1/chat/completions", json=BODY, headers=headers) as r:
        if r.status != 200:
            return r.status, (dict(r.headers), await r.json())
        usage = None
        async for line in r.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
        return 200, usage


async def test_concurrent_streams_cannot_overspend_and_spend_is_usage_at_catalog_prices(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    budget_nusd = 30 * most_nusd()
    tenant, key = await fleet.tenant_key(name="budgeted", budget={"usd": budget_nusd / 1e9, "period": "day"})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        results = await asyncio.gather(*(stream(s, fleet, key, i) for i in range(100)))
        served = [usage for status, usage in results if status == 200]
        refused = [body for status, body in results if status != 200]
        spent = sum(cost_nusd(u["prompt_tokens"], u["completion_tokens"], *PRICES) for u in served)
        with capsys.disabled():  # the figures, beside the captured ctl output below
            print(
                f"\n100 concurrent through 4 edges, budget ${budget_nusd / 1e9:.6f} (30 x the maximum cost): "
                f"{len(served)} served, {len(refused)} refused, spent ${spent / 1e9:.6f}"
            )
        assert all(u is not None for u in served)
        assert spent <= budget_nusd + most_nusd()  # overspend at most one request's maximum cost
        assert len(served) >= 29  # the budget is shared across edges, not split (each reserves its cost)
        assert refused and {status for status, _ in results} == {200, 429}
        headers, body = refused[0]
        assert body["error"]["code"] == "budget_exceeded" and body["error"]["type"] == "insufficient_quota"
        assert 0 < int(headers["Retry-After"]) <= 86_400
        # the reservations above real usage come back as the streams end: a few more fit, then none
        for i in range(20):
            status, usage = await stream(s, fleet, key, i)
            if status != 200:
                break
            served.append(usage)
            spent += cost_nusd(usage["prompt_tokens"], usage["completion_tokens"], *PRICES)
        assert status == 429 and spent <= budget_nusd + most_nusd(), (status, spent)

        async def report() -> dict[str, Any]:
            status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
            assert status == 200, body
            return dict(body)

        async def settled() -> bool:
            r = await report()
            return bool(r["budget"]["held_usd"] == 0 and r["totals"]["requests"] >= len(served))

        # what the edges' purses hold idle goes back within 2 s: what is left is served to the last request
        for i in range(10):
            await wait_for(settled, timeout=10, what="every reservation settled and the usage written")
            r = await report()
            if r["budget"]["left_usd"] < most_nusd() / 1e9:
                break
            status, usage = await stream(s, fleet, key, i)
            assert status == 200, (r["budget"], usage)
            served.append(usage)
            spent += cost_nusd(usage["prompt_tokens"], usage["completion_tokens"], *PRICES)
        with capsys.disabled():
            print(
                f"in all {len(served)} served, spent ${spent / 1e9:.6f}, left ${r['budget']['left_usd']:.6f}"
            )
    assert math.isclose(r["budget"]["spent_usd"], spent / 1e9, abs_tol=1e-12), r["budget"]
    assert math.isclose(r["totals"]["spend_usd"], spent / 1e9, abs_tol=1e-12), r["totals"]
    assert [(d["model"], round(d["spend_usd"] * 1e9)) for d in r["daily"]] == [(MODEL, spent)]
    assert 0 <= r["budget"]["left_usd"] < most_nusd() / 1e9
    prometheus = 0.0
    for served_edge in fleet.edges.values():
        async with aiohttp.ClientSession() as s, s.get(served_edge.make_url("/metrics")) as m:
            for family in text_string_to_metric_families(await m.text()):
                for sample in family.samples:
                    if (
                        sample.name == "meridian_edge_tenant_spend_usd_total"
                        and sample.labels["tenant"] == tenant
                    ):
                        assert sample.labels["model"] == MODEL
                        prometheus += sample.value
    assert math.isclose(prometheus, spent / 1e9, rel_tol=1e-9)
    monkeypatch.setenv("MERIDIAN_ADMIN_URL", fleet.admin_url)
    monkeypatch.setenv("MERIDIAN_TOKEN", fleet.viewer_token)
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["ctl", "usage", tenant]) == 0
    out = capsys.readouterr().out
    day = next(line for line in out.splitlines() if line.split()[:1] == [r["daily"][0]["day"]])
    assert day.split()[2:] == [str(len(served)), f"{spent / 1e9:.4f}"], out
    assert f"budget ${budget_nusd / 1e9:g} a day: spent ${spent / 1e9:.4f}" in out, out


async def test_a_budget_is_set_changed_and_cleared_by_patch_and_bad_budgets_are_422(fleet: Fleet) -> None:
    tenant, key = await fleet.tenant_key(name="b", budget={"usd": 1e-9, "period": "month"})
    async with aiohttp.ClientSession() as s:
        status, _ = await stream(s, fleet, key, 0)
        assert status == 429  # a nano-dollar covers no request
        status, after = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"budget": {"usd": 5}})
        assert status == 200 and after["budget"] == {"usd": 5.0, "period": "month"}, after
        status, after = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"budget": None})
        assert status == 200 and after["budget"] is None

        async def passes() -> bool:
            return (await stream(s, fleet, key, 0))[0] == 200

        await wait_for(passes, timeout=5, what="the edges to take the cleared budget")
    for bad in ({"usd": 0}, {"usd": -1}, {"usd": 5, "period": "week"}, {"usd": 5, "cap": 1}):
        status, body = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"budget": bad})
        assert status in (400, 422), (bad, body)
        assert "budget" in json.dumps(body), body


async def test_a_steady_tenant_waits_for_the_primary_only_at_its_start(fleet: Fleet) -> None:
    """Leases and the budget's purse are held ahead: past the first requests, a tenant sending steadily
    through one edge never waits for the primary, also when its first lease, far from spent, passes the
    age at which an unused lease goes back (LEASE_TTL_S) and as the purse's reservations are paid; once
    it stops, its leases go back and are not replaced."""
    tenant, key = await fleet.tenant_key(
        limits={"rpm": 6_000_000, "tpm": 10**9}, budget={"usd": 1_000.0, "period": "day"}
    )
    region = next(iter(fleet.edges))
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    body = {k: v for k, v in BODY.items() if not k.startswith("stream")}  # its real cost near its reservation
    url = fleet.edge_url(region) + "v1/chat/completions"
    for sim in (fleet.sim(r, rep) for r in fleet.sims for rep in fleet.sims[r]):
        sim.model = type(sim.model)(ttft_ms=5, per_token_ms=1)  # ~0.1 s a request: 100+ in the steady 2 s

    async def steadily(s: aiohttp.ClientSession, until: float) -> int:
        n = 0
        while time.monotonic() < until:
            async with s.post(url, json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                n += 1
        return n

    async with aiohttp.ClientSession() as s:
        start = time.monotonic()
        await asyncio.gather(*(steadily(s, start + 1.5) for _ in range(8)))  # the purse learns the rate
        before = await fleet.primary_waits(region)
        assert before.get("lease", 0) >= 1 and before.get("budget", 0) >= 1  # the first ones waited
        served = sum(await asyncio.gather(*(steadily(s, start + 1.5 + LEASE_TTL_S) for _ in range(8))))
        after = await fleet.primary_waits(region)
    assert served > 40
    assert after == before, (served, before, after)
    limiter = fleet.edges[region].edge.limiter
    assert limiter is not None

    async def given_back() -> bool:  # idle now: what it holds goes back, and no new lease replaces it
        return all(b.held < 1 for (t, _), b in limiter.buckets.items() if t == tenant)

    await wait_for(given_back, timeout=LEASE_TTL_S + 3.0, what="the idle tenant's leases to go back")
