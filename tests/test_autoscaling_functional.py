"""Autoscaling with the simulator backend, on real processes: the control plane scrapes the engines, decides
per pool, and switches the simulator's replica slots on and off (spot or on demand, with a cold start); the
prober sees them come and go and the edges route accordingly. Times are compressed (0.5 s decisions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.fleet import Fleet, start_fleet, wait_for
from tests.geodb import CLIENT_IP

REGION = "eu-west-1"
SLOTS = [{"name": f"euw1-{c}", "url": f"http://vllm-{c}.eu-west-1.internal:8000"} for c in "abcdef"]
POOL = {
    "model": "sim-llm",
    "min_replicas": 1,
    "max_replicas": 6,
    "target": {"metric": "concurrency", "value": 4},
    "on_demand_base": 1,
    "max_spot_share": 0.7,
    "price_on_demand_hour": 4.0,
    "price_spot_hour": 1.5,
    "cold_start_s": 0.3,
}
FAST = {
    "interval_s": 0.5,
    "smoothing": 1.0,
    "scale_up_period_s": 1.0,
    "scale_down_stabilization_s": 2.0,
    "scale_down_period_s": 1.0,
    "panic_window_s": 2.0,
}


async def fleet_with(
    tmp_path: Path, serve: ServerFactory, geo_db: Path, pool: dict[str, Any], **autoscaling: Any
) -> Fleet:
    return await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=(REGION,),
        probe_interval_s=0.5,
        sim_kwargs={"ttft_ms": 20.0, "per_token_ms": 5.0, "max_concurrency": 4},
        edge_overrides={"slow_start_s": 0.0, "retry_max_attempts": 4},
        region_overrides={REGION: {"replicas": SLOTS, "pools": [pool]}},
        autoscaling={**FAST, **autoscaling},
        cp_overrides={"autoscaler": "simulator"},
    )


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await fleet_with(tmp_path, serve, geo_db, POOL)
    try:
        yield f
    finally:
        await f.close()


async def pool(fleet: Fleet) -> dict[str, Any]:
    status, body = await fleet.admin("GET", f"/v1/pools/{REGION}/sim-llm")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def at(fleet: Fleet, check: Callable[[dict[str, Any]], bool], *, timeout: float, what: str) -> float:
    async def ok() -> bool:
        status, body = await fleet.admin("GET", f"/v1/pools/{REGION}/sim-llm")
        return status == 200 and check(body)  # 404 until the autoscaler's first word

    return await wait_for(ok, timeout=timeout, interval=0.1, what=what)


async def stream(s: aiohttp.ClientSession, fleet: Fleet, tokens: int = 40) -> tuple[int, float, bool]:
    """One streamed chat through the edge: (status, seconds to the first event, ended with [DONE])."""
    body = {
        "model": "sim-llm",
        "stream": True,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": "x"}],
    }
    started = time.monotonic()
    first = None
    async with s.post(
        fleet.edge_url(REGION) + "v1/chat/completions",
        json=body,
        headers={"X-Forwarded-For": CLIENT_IP["london"]},
    ) as r:
        text = b""
        async for chunk in r.content.iter_any():
            first = first or time.monotonic() - started
            text += chunk
    return r.status, first or 0.0, text.rstrip().endswith(b"data: [DONE]")


async def load(fleet: Fleet, clients: int, seconds: float) -> list[tuple[float, int, float, bool]]:
    """``clients`` closed loops of streamed requests for ``seconds``: (start, status, TTFT, complete)."""
    out: list[tuple[float, int, float, bool]] = []
    t0 = time.monotonic()

    async def loop(s: aiohttp.ClientSession) -> None:
        while time.monotonic() - t0 < seconds:
            began = time.monotonic() - t0
            out.append((began, *await stream(s, fleet)))

    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(loop(s) for _ in range(clients)))
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def test_idle_scales_down_and_a_surge_panics_up_within_the_reaction_time_and_ttft_recovers(
    fleet: Fleet,
) -> None:
    await at(fleet, lambda p: p["current"] == 1, timeout=15, what="the idle pool to come down to its minimum")
    surge = asyncio.create_task(load(fleet, clients=40, seconds=8.0))
    started = time.monotonic()
    reaction = await at(
        fleet, lambda p: p["current"] == 6, timeout=6, what="the surge to bring every slot on"
    )
    served = await surge
    print(f"\nsurge: 1 -> 6 replicas in {reaction:.1f} s")
    assert reaction <= 3.0  # two decisions, a scrape and the cold start
    early = [ttft for t, status, ttft, _ in served if t < 1.0 and status == 200]
    late = [ttft for t, status, ttft, _ in served if t > 5.0 and status == 200]
    print(f"TTFT p95 in the first second {p95(early) * 1000:.0f} ms, after 5 s {p95(late) * 1000:.0f} ms")
    assert p95(late) < 0.5 * p95(early)  # the new replicas took the queue
    assert {status for _, status, _, _ in served} == {200}
    _, audit = await fleet.admin("GET", "/v1/audit?limit=50")
    scaled = [e for e in audit["entries"] if e["region"] == f"pool:{REGION}/sim-llm"]
    assert any("panic" in e["reason"] for e in scaled)
    assert time.monotonic() - started < 30


async def test_oscillating_load_does_not_thrash(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> None:
    f = await fleet_with(tmp_path, serve, geo_db, POOL, scale_down_stabilization_s=6.0, panic_threshold=50.0)
    try:
        await at(f, lambda p: p["current"] == 1, timeout=20, what="the idle pool to come down")
        for _ in range(3):  # 10 <-> high every 3 s (30 s compressed tenfold)
            await load(f, clients=24, seconds=3.0)
            await load(f, clients=2, seconds=3.0)
        _, audit = await f.admin("GET", "/v1/audit?limit=200")
        actions = [
            e
            for e in audit["entries"]
            if e["region"] == f"pool:{REGION}/sim-llm" and e["action"].startswith("scale")
        ]
        ups = [e for e in actions if int(e["action"].split()[-1]) > int(e["action"].split()[1])]
        print(f"\noscillation: {len(actions)} scaling actions ({len(ups)} up) in 18 s")
        downs_after_idle = [e for e in actions if e not in ups][5:]  # the idle scale-down at start: 6 -> 1
        assert len(ups) <= 3 and not downs_after_idle
    finally:
        await f.close()


async def test_a_cost_ceiling_holds_under_a_runaway_signal(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    capped = {**POOL, "min_replicas": 1}
    f = await fleet_with(tmp_path, serve, geo_db, capped, cost_ceiling_hour=10.0)
    try:
        await at(f, lambda p: p["current"] <= 3, timeout=15, what="the pool to fit under the ceiling")
        runaway = asyncio.create_task(load(f, clients=60, seconds=4.0))
        seen: list[dict[str, Any]] = []
        alert = False
        binding = 'meridian_pool_cost_ceiling_binding{model="sim-llm",region="eu-west-1"} 1.0'
        async with aiohttp.ClientSession() as s:
            while not runaway.done():
                seen.append(await pool(f))
                async with s.get(f.admin_url + "/metrics") as r:
                    alert = alert or binding in await r.text()
                await asyncio.sleep(0.2)
        await runaway
        most = max(p["current"] for p in seen), max(p["cost_per_hour"] for p in seen)
        print(f"\nrunaway: at most {most[0]} replicas, {most[1]} $/h")
        assert max(p["cost_per_hour"] for p in seen) <= 10.0
        assert any(p["cost_capped"] and "cost ceiling" in p["reason"] for p in seen)
        assert alert  # the alert metric said so while it bound
    finally:
        await f.close()


async def test_spot_interruptions_under_load_lose_no_request(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    spotty = {**POOL, "min_replicas": 6, "max_spot_share": 0.9}  # 1 on demand, 5 on spot
    f = await fleet_with(tmp_path, serve, geo_db, spotty)
    try:
        before = await pool(f)
        assert before["spot"] == 5 and before["on_demand"] == 1
        spot = [r for r, kind in before["replicas"].items() if kind == "spot"]
        traffic = asyncio.create_task(load(f, clients=16, seconds=5.0))
        await asyncio.sleep(1.0)
        for replica in spot[:4]:  # 80 % of the spot replicas, under load
            status, body = await f.admin(
                "POST",
                f"/v1/pools/{REGION}/sim-llm/interruptions",
                body={"replica": replica, "reason": "notice"},
            )
            assert status == 202, body
            await asyncio.sleep(0.25)
        served = await traffic
        assert served and all(status == 200 and complete for _, status, _, complete in served), [
            s for s in served if s[1] != 200 or not s[3]
        ]
        after = await pool(f)
        assert after["current"] == 6 and after["on_demand"] >= 5  # replaced, on demand while spot is short
        status, body = await f.admin(
            "POST", f"/v1/pools/{REGION}/sim-llm/interruptions", body={"replica": "nope"}
        )
        assert status == 422 and body["fields"] == ["replica"]
    finally:
        await f.close()
