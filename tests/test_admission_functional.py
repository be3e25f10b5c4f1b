"""Fair admission while a pool is saturated, on real processes: simulators kept saturated by a flood of
their own clients, the control plane scraping their engines, an edge holding requests in priority bands
(one-in-one-out while every replica is saturated), shedding batch first with 503 ``overloaded``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.pools import PoolKey
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

REGION = "eu-west-1"
POOL = PoolKey(REGION, None)  # the open world: one pool per region
QUEUE = {
    "critical": {"size": 8, "wait_s": 30},
    "normal": {"size": 8, "wait_s": 30},
    "batch": {"size": 1, "wait_s": 30},
}


@pytest.fixture
async def fleet(
    tmp_path: Path, serve: ServerFactory, geo_db: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Fleet]:
    queue = getattr(request, "param", QUEUE)
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=(REGION,),
        auth=True,
        edge_overrides={"queue": queue, "slow_start_s": 0.0},
    )
    try:
        yield f
    finally:
        await f.close()


@contextlib.asynccontextmanager
async def saturated(fleet: Fleet) -> AsyncIterator[None]:
    """Every replica of the region kept saturated (one running, six waiting) by clients of its own."""
    for name in fleet.sims[REGION]:
        fleet.sim(REGION, name).engine.max_batch = 1
    body = {"model": "sim-llm", "max_tokens": 20, "messages": [{"role": "user", "content": "flood"}]}

    async def loop(s: aiohttp.ClientSession, url: str) -> None:
        while True:
            async with s.post(url, json=body) as r:
                await r.read()

    async with aiohttp.ClientSession() as s:
        urls = [str(server.make_url("/v1/chat/completions")) for server in fleet.sims[REGION].values()]
        tasks = [asyncio.create_task(loop(s, u)) for u in urls for _ in range(7)]

        async def seen() -> bool:
            url = fleet.edge_url(REGION) + f"_meridian/route?ip={CLIENT_IP['london']}"
            async with s.get(url) as r:
                rows = [x for c in (await r.json())["candidates"] for x in c["replicas"]]
            return bool(rows) and all(x["saturated"] for x in rows)

        try:
            await wait_for(seen, timeout=10, what="the edge to see every replica saturated")
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def chat(
    fleet: Fleet,
    key: str,
    priority: str,
    *,
    max_tokens: int = 2,
    done: list[str] | None = None,
    name: str = "",
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {
        "Authorization": f"Bearer {key}",
        "X-Forwarded-For": CLIENT_IP["london"],
        "X-Meridian-Priority": priority,
    }
    payload = {"model": "sim-llm", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url(REGION) + "v1/chat/completions", json=payload, headers=headers) as r,
    ):
        body = await r.json()
        if done is not None:
            done.append(name)
        return r.status, dict(r.headers), body


def held(fleet: Fleet) -> Callable[[], dict[str, int]]:
    return fleet.edges[REGION].edge.gate.held


async def test_without_saturation_nothing_waits(fleet: Fleet) -> None:
    _, key = await fleet.tenant_key(priority="critical")
    results = await asyncio.gather(*(chat(fleet, key, p) for p in ("critical", "normal", "batch") * 4))
    assert {status for status, _, _ in results} == {200}
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url(REGION) + "metrics") as r:
        text = await r.text()
    assert "meridian_edge_queue_wait_seconds_count" not in text  # no request was held
    assert "meridian_edge_saturation_episodes_total{" not in text


async def test_while_saturated_requests_are_held_critical_goes_first_and_a_full_batch_band_sheds(
    fleet: Fleet,
) -> None:
    _, key = await fleet.tenant_key(priority="critical")
    gate = fleet.edges[REGION].edge.gate
    done: list[str] = []
    async with saturated(fleet):
        first = asyncio.create_task(chat(fleet, key, "normal", max_tokens=60, done=done, name="first"))
        await wait_for(
            lambda: asyncio.sleep(0, gate.pools.get(POOL) is not None and gate.pools[POOL].inflight == 1),
            timeout=5,
            what="the first request to go (this edge's share of the saturated pool: one)",
        )
        batch = asyncio.create_task(chat(fleet, key, "batch", done=done, name="batch"))
        await wait_for(lambda: asyncio.sleep(0, held(fleet)()["batch"] == 1), timeout=5, what="batch held")
        status, headers, body = await chat(fleet, key, "batch")  # the batch band holds one: shed at once
        assert status == 503 and body["error"]["code"] == "overloaded"
        assert body["error"]["type"] == "overloaded_error" and headers["Retry-After"] == "30"
        critical = asyncio.create_task(chat(fleet, key, "critical", done=done, name="critical"))
        await wait_for(
            lambda: asyncio.sleep(0, held(fleet)()["critical"] == 1), timeout=5, what="critical held"
        )
        assert gate.pools[POOL].inflight == 1  # the held ones did not pile onto the saturated engines
        results = await asyncio.gather(first, batch, critical)
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert done == ["first", "critical", "batch"]  # each end lets the highest band go next
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url(REGION) + "metrics") as r:
        text = await r.text()
    assert 'meridian_edge_shed_total{band="batch",reason="full"} 1.0' in text
    assert 'meridian_edge_queue_wait_seconds_count{band="critical"} 1.0' in text


SHORT_BATCH = {**QUEUE, "batch": {"size": 8, "wait_s": 0.5}}


@pytest.mark.parametrize("fleet", [SHORT_BATCH], indirect=True)
async def test_a_held_request_is_shed_after_its_bands_wait_and_the_rest_go_when_room_comes_back(
    fleet: Fleet,
) -> None:
    _, key = await fleet.tenant_key(priority="critical")
    gate = fleet.edges[REGION].edge.gate
    async with saturated(fleet):
        first = asyncio.create_task(chat(fleet, key, "normal", max_tokens=400))  # holds the share ~2 s
        await wait_for(
            lambda: asyncio.sleep(0, gate.pools.get(POOL) is not None and gate.pools[POOL].inflight == 1),
            timeout=5,
            what="the first request to go",
        )
        started = time.monotonic()
        status, _, body = await chat(fleet, key, "batch")
        waited = time.monotonic() - started
        assert (
            status == 503
            and body["error"]["code"] == "overloaded"
            and "waited 0.5 s" in body["error"]["message"]
        )
        assert 0.5 <= waited < 5
        held_normal = [asyncio.create_task(chat(fleet, key, "normal")) for _ in range(3)]
        await wait_for(lambda: asyncio.sleep(0, held(fleet)()["normal"] == 3), timeout=5, what="three held")
    # the flood stopped: the engines drain, the signals show room, and everything held goes
    results = await asyncio.gather(first, *held_normal)
    assert [status for status, _, _ in results] == [200] * 4
    assert held(fleet)() == {"critical": 0, "normal": 0, "batch": 0}
