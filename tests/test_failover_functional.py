"""Lose a region under load and nobody notices: failover, retry budget, slow start, flap hold-down, Redis
primary loss. Real redis-server, simulators and edges over loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from regionsim.model import Faults
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP
from tests.load import Load, percentile

PLACES = {
    "london": "eu-west-1",
    "new_york": "us-east-1",
    "california": "us-west-2",
    "singapore": "ap-southeast-1",
}


def clients(fleet: Fleet) -> dict[str, tuple[str, str]]:
    return {place: (fleet.edge_url(edge), CLIENT_IP[place]) for place, edge in PLACES.items()}


def set_region_faults(fleet: Fleet, region: str, faults: Faults) -> None:
    for rep in fleet.sims[region]:
        fleet.sim(region, rep).faults = faults


async def london_route(fleet: Fleet) -> str:
    """The London edge's route explanation for a London client (JSON)."""
    url = fleet.edge_url("eu-west-1") + "_meridian/route"
    async with aiohttp.ClientSession() as s, s.get(url, params={"ip": CLIENT_IP["london"]}) as r:
        return await r.text()


async def route_state(fleet: Fleet) -> str:
    """The regions' stored health and replicas, and the London edge's route explanation for London."""
    _, regions = await fleet.admin("GET", "/v1/regions")
    states = {
        r["name"]: (r.get("health"), r.get("replicas"), r.get("latency_ms")) for r in regions["regions"]
    }
    return f"regions: {states}\nLondon at the eu-west-1 edge: {(await london_route(fleet))[:3000]}"


async def _measured_ahead(fleet: Fleet, region: str, other: str) -> bool:
    """The London edge scores ``region`` better than ``other`` by more than the switch margin (its own view:
    what moves a held primary)."""
    scores = {row["region"]: row["score_ms"] for row in json.loads(await london_route(fleet))["scores"]}
    policy = fleet.topology.policy
    margin = max(policy.switch_margin_ms, policy.switch_margin_ratio * scores[other])
    return bool(scores[other] - scores[region] > margin)


async def metric(fleet: Fleet, edge: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url(edge) + "metrics") as r:
        text = await r.text()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


async def test_whole_region_down_under_load_no_client_error(fleet: Fleet) -> None:
    streaming = {"london": (fleet.edge_url("eu-west-1"), CLIENT_IP["london"])}
    stream_body = {"model": "sim-llm", "messages": [], "max_tokens": 3, "stream": True}
    async with (
        Load(clients(fleet), per_place=3) as load,
        Load(streaming, per_place=2, body=stream_body) as sse,
    ):
        await wait_for(lambda: _true(len(load.samples) > 200), timeout=10, what="steady load")
        fault_at = time.monotonic()
        set_region_faults(fleet, "eu-west-1", Faults(down=True))
        await asyncio.sleep(3.0)  # the load runs for a fixed window after the fault: that is the experiment
    # streams that had not started when the region went down fail over like any request
    sse_after = [s for s in sse.samples if s.started >= fault_at]
    assert sse_after and sse.errors(since=fault_at) == []
    assert "eu-west-1" not in {s.region for s in sse_after if s.started >= fault_at + 1.0}
    errors = load.errors()
    london_eu_after = [
        s for s in load.samples if s.place == "london" and s.region == "eu-west-1" and s.finished > fault_at
    ]
    last_eu = max((s.finished - fault_at for s in london_eu_after), default=0.0)
    after = load.served("london", since=fault_at + 1.0)
    print(
        f"\nregion down: {len(load.samples)} requests, {len(errors)} errors; last London response from "
        f"eu-west-1 {last_eu * 1000:.0f} ms after the fault; London after 1 s: {after}"
    )
    assert errors == []
    # off the failed region within 1 s, onto the backup. A third region may take a share when the backup's
    # measured latency rises under the extra load to within tie_margin (5 %) of it: the anti-herding
    # softmin then gives the better of the two between 1/2 and 1/(1 + e^-2) ≈ 88 % of the traffic.
    assert "eu-west-1" not in after
    why = await route_state(fleet)  # what the control plane and the London edge saw, should this fail
    assert set(after) <= {"us-east-1", "us-west-2"}, why
    # Virginia is the backup when the London edge measures it so: its probes put it 7 ms nearer than Oregon
    # (a quarter of the real round trips), which a loaded machine's event-loop lag can cancel for the moment
    # of the failover; the lead drawn then is held unless another region is better by more than the switch
    # margin (20 %), by design. So: Oregon may hold London only while Virginia is not that much better as
    # measured (the hold rules themselves are tested with fixed numbers in test_routing.py)
    if await _measured_ahead(fleet, "us-east-1", "us-west-2"):
        assert after.get("us-east-1", 0) > 0.5 * sum(after.values()), why
    assert last_eu < 1.0
    ejections = await metric(fleet, "eu-west-1", "meridian_edge_ejections_total")
    assert ejections >= 1  # the London edge ejected the region passively


async def test_thirty_percent_503_retries_stay_within_budget(fleet: Fleet) -> None:
    async with Load(clients(fleet), per_place=3) as load:
        await wait_for(lambda: _true(len(load.samples) > 200), timeout=10, what="steady load")
        start = time.monotonic()
        set_region_faults(fleet, "eu-west-1", Faults(error_rate=0.3))
        await asyncio.sleep(3.0)
    during = [s for s in load.samples if s.started >= start]
    before = [s for s in load.samples if s.started < start]
    retries = await metric(fleet, "eu-west-1", "meridian_edge_retries_total")
    original = await metric(fleet, "eu-west-1", "meridian_edge_requests_total")
    london_requests = sum(1 for s in load.samples if s.place == "london")
    budget = 0.2 * london_requests + 3.0 * 10
    ny_before = [s.finished - s.started for s in before if s.place == "new_york"]
    ny_during = [s.finished - s.started for s in during if s.place == "new_york"]
    p95_b, p95_d = percentile(ny_before, 95), percentile(ny_during, 95)
    errs = [s for s in during if s.status != 200]
    print(
        f"\n30% 503 on eu-west-1: London edge retries {retries:.0f} for {london_requests} London requests "
        f"(budget {budget:.0f}); client errors {len(errs)}/{len(during)}; New York p95 {p95_b * 1000:.1f} ms "
        f"before, {p95_d * 1000:.1f} ms during ({len(ny_during)} requests)"
    )
    assert retries <= budget
    assert original >= london_requests * 0.9
    # New York's clients do not pay for London's retries: still served at home, as fast. The 95th
    # percentile, not the 99th: the edges share this test's process, and one 0.5 s stall of a busy machine
    # (seen in CI) delays the three New York requests then in flight, which is the 99th of ~200.
    assert {s.region for s in during if s.place == "new_york"} == {"us-east-1"}
    assert p95_d < 3 * p95_b + 0.05


@pytest.mark.slow
async def test_recovered_region_ramps_back_and_flapping_is_held_down(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=("eu-west-1", "us-east-1"),
        probe_interval_s=0.5,
        edge_overrides={"failback_ramp_s": 3.0, "failback_hold_base_s": 4.0},
    )
    try:
        london = {"london": (f.edge_url("eu-west-1"), CLIENT_IP["london"])}
        async with Load(london, per_place=4) as load:
            await wait_for(lambda: _true(len(load.samples) > 50), timeout=10, what="load")
            set_region_faults(f, "eu-west-1", Faults(down=True))

            async def health(want: str) -> bool:
                _, body = await f.admin("GET", "/v1/regions/eu-west-1")
                return bool(body["health"] == want)

            await wait_for(lambda: health("down"), timeout=5, what="eu-west-1 down")
            set_region_faults(f, "eu-west-1", Faults())
            await wait_for(lambda: health("up"), timeout=5, what="eu-west-1 up")
            up_at = time.monotonic()
            await asyncio.sleep(4.0)  # observe the ramp window
            first = load.served("london", since=up_at, until=up_at + 1.0)
            last = load.served("london", since=up_at + 3.2, until=up_at + 4.0)
            share_first = first.get("eu-west-1", 0) / max(1, sum(first.values()))
            share_last = last.get("eu-west-1", 0) / max(1, sum(last.values()))
            print(
                f"\nslow start: eu-west-1 share of London {share_first:.2f} in the first second after "
                f"recovery, {share_last:.2f} after the 3 s ramp"
            )
            assert share_first < 0.6 and share_last > 0.9

            # flapping: down, then up-blips of ~1 s every 2 s; after the first relapse no blip gets traffic
            flap_start = time.monotonic()
            blips: list[tuple[float, float]] = []
            for _ in range(4):
                set_region_faults(f, "eu-west-1", Faults(down=True))
                await wait_for(lambda: health("down"), timeout=5, what="down")
                set_region_faults(f, "eu-west-1", Faults())
                await wait_for(lambda: health("up"), timeout=5, what="up")
                t = time.monotonic()
                await asyncio.sleep(1.0)
                blips.append((t, time.monotonic()))
            on_blips = sum(load.served("london", since=a, until=b).get("eu-west-1", 0) for a, b in blips[1:])
            total = sum(sum(load.served("london", since=a, until=b).values()) for a, b in blips[1:])
            print(
                f"flapping for {time.monotonic() - flap_start:.1f} s: London requests served by eu-west-1 "
                f"during up-blips 2-4: {on_blips} of {total}"
            )
            assert on_blips == 0
        assert load.errors() == []
    finally:
        await f.close()


async def test_redis_primary_loss_admin_503_data_plane_unharmed(fleet: Fleet) -> None:
    async with Load(clients(fleet), per_place=2) as load:
        await wait_for(lambda: _true(len(load.samples) > 100), timeout=10, what="steady load")
        fleet.primary.kill()
        status, body = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 10, "reason": "x"})
        assert status == 503 and "primary unavailable" in body["detail"]
        status, _ = await fleet.admin("GET", "/v1/regions")
        assert status == 503
        n = len(load.samples)
        await wait_for(lambda: _true(len(load.samples) > n + 100), timeout=10, what="load after kill")
    assert load.errors() == []


async def _true(value: bool) -> bool:
    return value
