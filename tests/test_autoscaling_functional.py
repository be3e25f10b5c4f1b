"""Autoscaling with the simulator backend, on real processes: the control plane scrapes the engines, decides
per pool, and switches the simulator's replica slots on and off (spot or on demand, with a cold start); the
prober sees them come and go and the edges route accordingly. Times are compressed (0.5 s decisions)."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from regionsim.model import Faults
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

REGION = "eu-west-1"
POOL: dict[str, Any] = {  # the pool as the admin API takes it
    "model": "sim-llm",
    "min_replicas": 1,
    "max_replicas": 6,
    "target": {"metric": "concurrency", "value": 3},  # of an engine batch of 4: headroom
    "on_demand_base": 1,
    "max_spot_share": 0.7,
    "price_on_demand_hour": 4.0,
    "price_spot_hour": 1.5,
    "cold_start_s": 0.3,
}
REACTION_S = 3.0  # two decisions (0.5 s), a scrape (0.5 s), the cold start (0.3 s) and the probes' rise
TTFT_SLO_S = 0.5  # p95 time to first token once the pool has scaled (one replica alone queues ~1 s)
COMPRESSION = 20.0  # simulated time runs this much faster: the two-minute spot warning lasts 6 s
FAST = {
    "interval_s": 0.5,
    "smoothing": 1.0,
    "scale_up_period_s": 1.0,
    "scale_down_stabilization_s": 2.0,
    "scale_down_period_s": 1.0,
    "panic_window_s": 2.0,
}


async def fleet_with(
    tmp_path: Path,
    serve: ServerFactory,
    geo_db: Path,
    pool: dict[str, Any],
    *,
    regions: tuple[str, ...] = (REGION,),
    edge: dict[str, Any] | None = None,
    **autoscaling: Any,
) -> Fleet:
    """A fleet of ``regions``, each with six replica slots in one pool of ``pool``."""
    return await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=regions,
        probe_interval_s=0.5,
        sim_kwargs={"ttft_ms": 20.0, "per_token_ms": 5.0, "max_concurrency": 4},
        edge_overrides={"slow_start_s": 0.0, "retry_max_attempts": 4, **(edge or {})},
        region_overrides={r: {"replicas": slots(r), "pools": [pool]} for r in regions},
        autoscaling={**FAST, **autoscaling},
        cp_overrides={"autoscaler": "simulator"},
    )


def slots(region: str) -> list[dict[str, str]]:
    short = "".join(part[0] for part in region.split("-")[:2]) + region[-1]
    return [{"name": f"{short}-{c}", "url": f"http://vllm-{c}.{region}.internal:8000"} for c in "abcdef"]


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await fleet_with(tmp_path, serve, geo_db, POOL)
    try:
        yield f
    finally:
        await f.close()


async def pool(fleet: Fleet, region: str = REGION) -> dict[str, Any]:
    status, body = await fleet.admin("GET", f"/v1/pools/{region}/sim-llm")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def at(
    fleet: Fleet,
    check: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    what: str,
    region: str = REGION,
) -> float:
    async def ok() -> bool:
        status, body = await fleet.admin("GET", f"/v1/pools/{region}/sim-llm")
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
        try:
            async for chunk in r.content.iter_any():
                first = first or time.monotonic() - started
                text += chunk
        except aiohttp.ClientPayloadError:  # cut mid-stream
            return r.status, first or 0.0, False
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


@pytest.mark.slow
async def test_idle_scales_down_and_a_surge_panics_up_within_the_reaction_time_and_ttft_recovers(
    fleet: Fleet,
) -> None:
    await at(fleet, lambda p: p["current"] == 1, timeout=15, what="the idle pool to come down to its minimum")
    surge = asyncio.create_task(load(fleet, clients=16, seconds=8.0))  # needs 6 replicas at 3 each

    async def coming() -> bool:  # the region's state counts the replicas starting (its capacity coming)
        status, body = await fleet.admin("GET", f"/v1/regions/{REGION}")
        return status == 200 and body["starting"] >= 1

    seen_coming = asyncio.create_task(wait_for(coming, timeout=6, interval=0.05, what="replicas starting"))
    started = time.monotonic()
    reaction = await at(
        fleet, lambda p: p["current"] == 6, timeout=6, what="the surge to bring the replicas it needs on"
    )
    await seen_coming
    served = await surge
    print(f"\nsurge: 1 -> 6 replicas in {reaction:.1f} s")
    assert reaction <= REACTION_S
    early = [ttft for t, status, ttft, _ in served if t < 1.0 and status == 200]
    late = [ttft for t, status, ttft, _ in served if t > REACTION_S + 1.0 and status == 200]
    print(
        f"TTFT p95 in the first second {p95(early) * 1000:.0f} ms, after {REACTION_S + 1:g} s "
        f"{p95(late) * 1000:.0f} ms (SLO {TTFT_SLO_S * 1000:.0f} ms)"
    )
    assert p95(early) > TTFT_SLO_S  # one replica could not meet it: the surge queued
    assert p95(late) <= TTFT_SLO_S  # the new replicas took the queue
    assert {status for _, status, _, _ in served} == {200}
    _, audit = await fleet.admin("GET", "/v1/audit?limit=50")
    scaled = [e for e in audit["entries"] if e["region"] == f"pool:{REGION}/sim-llm"]
    assert any("panic" in e["reason"] for e in scaled)
    assert time.monotonic() - started < 30


async def test_a_machine_that_fails_is_replaced_and_the_pool_serves_at_full_strength_again(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """Two of the pool's three machines fail (down to the probes): after ``replace_down_after_s`` each is
    given back and another slot starts in its place, so the pool is back at three serving replicas."""
    steady = {**POOL, "min_replicas": 3, "max_replicas": 6, "on_demand_base": 3}
    f = await fleet_with(tmp_path, serve, geo_db, steady, replace_down_after_s=1.0)
    try:
        await at(f, lambda p: p["current"] == 3, timeout=15, what="the pool at its minimum")
        failed = sorted((await pool(f))["replicas"])[:2]
        for replica in failed:
            f.sim(REGION, replica).faults = Faults(down=True)

        async def replaced() -> bool:
            _, audit = await f.admin("GET", "/v1/audit?limit=50")
            done = {e["action"].split()[-1] for e in audit["entries"] if "replaced" in e["reason"]}
            _, region = await f.admin("GET", f"/v1/regions/{REGION}")
            up = sum(1 for h in region["replicas"].values() if h == "up")
            return set(failed) <= done and up >= 3

        await wait_for(replaced, timeout=15, interval=0.1, what="the failed machines replaced")
        now_on = (await pool(f))["replicas"]
        assert not set(failed) & set(now_on) and len(now_on) == 3
    finally:
        await f.close()


@pytest.mark.slow
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
        auth = {"Authorization": f"Bearer {f.viewer_token}"}  # the control plane's /metrics needs a token
        async with aiohttp.ClientSession() as s:
            while not runaway.done():
                seen.append(await pool(f))
                async with s.get(f.admin_url + "/metrics", headers=auth) as r:
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


async def test_notices_for_on_demand_machines_need_force_and_never_take_the_pool_below_its_minimum(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """Two concurrent notices for a pool's two on-demand replicas (its minimum): refused (409) unless
    forced; forced, they are taken one at a time and each replica serves until its replacement does, so
    the pool never has fewer than 2 replicas serving."""
    steady = {**POOL, "min_replicas": 2, "max_replicas": 4, "on_demand_base": 2, "max_spot_share": 0.0}
    steady["cold_start_s"] = 1.0
    f = await fleet_with(tmp_path, serve, geo_db, steady)
    try:
        await at(f, lambda p: p["current"] == 2, timeout=10, what="the pool at its minimum")
        before = await pool(f)
        on_demand = sorted(r for r, kind in before["replicas"].items() if kind == "on_demand")
        assert len(on_demand) == 2 and before["current"] == 2

        async def notice(replica: str, **extra: Any) -> tuple[int, Any]:
            body = {"replica": replica, "reason": "node agent", **extra}
            return await f.admin("POST", f"/v1/pools/{REGION}/sim-llm/interruptions", body=body)

        refused = await asyncio.gather(*(notice(r) for r in on_demand))
        assert [status for status, _ in refused] == [409, 409], refused
        assert "on demand" in refused[0][1]["detail"]
        serving: list[int] = []
        trace: list[tuple[float, tuple[str, ...]]] = []  # (when, the replicas serving) on every change
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                serving.append(sum(f.sim(REGION, r).serving for r in f.sims[REGION]))
                now = tuple(r for r in f.sims[REGION] if f.sim(REGION, r).serving)
                if not trace or trace[-1][1] != now:
                    trace.append((round(time.monotonic(), 2), now))
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        forced = await asyncio.gather(*(notice(r, force=True) for r in on_demand))
        assert [status for status, _ in forced] == [202, 202], forced
        await at(
            f,
            lambda p: p["current"] == 2 and not set(p["replicas"]) & set(on_demand),
            timeout=10,
            what="both replaced and switched off",
        )
        done.set()
        await sampler
        print(f"\nserving replicas while both were replaced: min {min(serving)}, max {max(serving)}")
        assert min(serving) >= 2, trace
    finally:
        await f.close()


@pytest.mark.slow
async def test_spot_notices_over_two_simulated_minutes_under_load_lose_no_request(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The simulator gives the notices (as the cloud's instance metadata would, two minutes ahead), at
    random times over two simulated minutes, to 80 % of the spot replicas; the autoscaler finds them on its
    own (no API call), drains each and replaces it on demand before its machine goes."""
    spotty = {**POOL, "min_replicas": 6, "max_spot_share": 0.9}  # 1 on demand, 5 on spot
    f = await fleet_with(tmp_path, serve, geo_db, spotty)
    try:
        before = await pool(f)
        spot = [r for r, kind in before["replicas"].items() if kind == "spot"]
        assert len(spot) == 5
        warning, window = 120 / COMPRESSION, 120 / COMPRESSION
        rng = random.Random(7)
        when = sorted(rng.uniform(0, window) for _ in spot[:4])
        traffic = asyncio.create_task(load(f, clients=16, seconds=window + warning + 1.0))
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            for replica, at_s in zip(spot[:4], when, strict=True):
                await asyncio.sleep(max(0.0, t0 + at_s - time.monotonic()))
                url = str(f.sims[REGION][replica].make_url("/_sim/notice"))
                async with s.post(url, json={"in_s": warning}) as r:
                    assert r.status == 200, await r.text()
        served = await traffic
        cut = sum(f.sim(REGION, r).stats.reclaimed_cut for r in spot)
        print(f"\nspot notices at {[round(t, 1) for t in when]} s: {len(served)} requests, {cut} cut")
        assert cut == 0  # every noticed machine was drained before it went
        assert served and all(status == 200 and complete for _, status, _, complete in served), [
            x for x in served if x[1] != 200 or not x[3]
        ]
        after = await pool(f)
        assert after["current"] == 6 and after["on_demand"] >= 5  # replaced on demand: that spot is gone
        _, audit = await f.admin("GET", "/v1/audit?limit=100")
        noticed = [e for e in audit["entries"] if e["action"].startswith("interrupt spot")]
        assert sorted(e["action"].split()[-1] for e in noticed) == sorted(spot[:4])
        assert all(e["reason"].startswith("spot notice: terminate at") for e in noticed)
    finally:
        await f.close()


@pytest.mark.slow
async def test_a_drained_region_hands_its_load_and_the_others_scale_ahead_of_their_own_signals(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """London's traffic runs in eu-west-1; once operators drain it, us-east-1 takes it on. Its pool scales
    for eu-west-1's load as soon as the drain is seen, while its own smoothed signals (weight 0.2 a round)
    have counted only part of the traffic that moved."""
    other = "us-east-1"
    steady = {**POOL, "min_replicas": 3}  # eu-west-1 carries London from the start (no spill to scale for)
    f = await fleet_with(
        tmp_path, serve, geo_db, steady, regions=(REGION, other), smoothing=0.2, panic_threshold=50.0
    )
    traffic: asyncio.Task[Any] | None = None
    try:
        await at(f, lambda p: p["current"] == 3, timeout=20, what="us-east-1 idle", region=other)
        traffic = asyncio.create_task(load(f, clients=12, seconds=16.0))
        await at(
            f,
            lambda p: (p["load"] or 0) >= 8 and p["current"] >= 3,
            timeout=15,
            what="eu-west-1 to carry London's load",
        )
        before = (await pool(f, other))["desired"]
        status, body = await f.admin(
            "PATCH", f"/v1/regions/{REGION}", body={"drained": True, "reason": "maintenance"}
        )
        assert status == 200, body
        seen: list[dict[str, Any]] = []

        async def ahead() -> bool:  # scaled up, past what its own load needs, for what it absorbed
            seen.append(await pool(f, other))
            p = seen[-1]
            own = math.ceil(p["load"] / POOL["target"]["value"])
            return bool(p["absorbed"] > 0 and p["desired"] > max(before, own))

        try:
            waited = await wait_for(
                ahead, timeout=5, interval=0.1, what="us-east-1 to scale for what it absorbs"
            )
        finally:
            print(
                f"\nbefore the drain {before}; after:",
                [(x["desired"], x["load"], x["absorbed"]) for x in seen],
            )
        p = seen[-1]
        print(
            f"\nabsorbed {p['absorbed']} of eu-west-1's load {waited:.1f} s after the drain: "
            f"own load {p['load']}, desired {p['desired']} ({p['reason']})"
        )
        assert "absorbed from drained or down regions" in p["reason"]
        await at(f, lambda p: p["current"] >= 3, timeout=8, what="us-east-1 to carry London", region=other)
        served = await traffic
        assert {status for _, status, _, _ in served} == {200}
    finally:
        if traffic is not None:
            traffic.cancel()
        await f.close()


async def test_a_pool_at_zero_holds_requests_while_its_first_replica_starts(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """Scale to zero: the idle pool goes to no replica; a request then waits at the edge (bounded in number:
    beyond it, 503 at once) while the autoscaler, told by the edge's wake mark, starts a first replica."""
    sleepy = {**POOL, "min_replicas": 0, "scale_to_zero": True, "cold_start_s": 1.0}
    f = await fleet_with(tmp_path, serve, geo_db, sleepy, edge={"wake_max_held": 3, "wake_hold_s": 20.0})
    try:
        await at(f, lambda p: p["current"] == 0, timeout=20, what="the idle pool to scale to zero")
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(stream(s, f) for _ in range(5)))
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        print(f"\nfrom zero: first tokens after {sorted(round(r[1], 2) for r in served)} s")
        assert len(served) == 3 and all(complete for _, _, complete in served)
        assert len(refused) == 2  # beyond wake_max_held: refused at once, not held
        assert min(ttft for _, ttft, _ in served) >= sleepy["cold_start_s"]  # they waited for it
        assert all(status == 503 and ttft < 1.0 for status, ttft, _ in refused)
        assert (await pool(f))["current"] >= 1
        _, audit = await f.admin("GET", "/v1/audit?limit=50")
        woke = [e for e in audit["entries"] if e["action"] == "scale 0 -> 1"]
        assert woke and "wait for a first replica" in woke[0]["reason"]
        async with aiohttp.ClientSession() as s, s.get(f.edge_url(REGION) + "metrics") as r:
            text = await r.text()
        assert 'meridian_edge_wake_outcomes_total{outcome="served"} 3.0' in text
        assert 'meridian_edge_wake_outcomes_total{outcome="full"} 2.0' in text
    finally:
        await f.close()
