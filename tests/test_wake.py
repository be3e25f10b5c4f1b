"""The edge's hold for pools at zero (``edge.admission.wake.Waker``) and the wake marks' format
(``fleet.wake``): bounded in number and time, released by news, the nearest undrained region woken, marks
counted only while fresh."""

from __future__ import annotations

import asyncio

from edge.admission.wake import Waker
from edge.telemetry.metrics import EdgeMetrics
from fleet.pools import PoolKey
from fleet.state import Snapshot, Topology, initial_state
from fleet.topology import parse_topology
from fleet.wake import MOST_HELD, WAKE_FRESH_S, wake_mark, woken

TOPOLOGY = """
regions:
  - name: near
    location: {lat: 51.5, lon: -0.1}
    capacity: 8
    replicas: [{name: n-a, url: "http://n-a:8000"}, {name: n-b, url: "http://n-b:8000"}]
    pools:
      - {model: m, min_replicas: 0, scale_to_zero: true, max_replicas: 1, target: {value: 4},
         price_on_demand_hour: 2}
  - name: far
    location: {lat: 1.3, lon: 103.8}
    capacity: 8
    replicas: [{name: f-a, url: "http://f-a:8000"}, {name: f-b, url: "http://f-b:8000"}]
    pools:
      - {model: m, min_replicas: 0, scale_to_zero: true, max_replicas: 1, target: {value: 4},
         price_on_demand_hour: 2}
  - name: fixed
    location: {lat: 40.7, lon: -74.0}
    capacity: 8
    replicas: [{name: x-a, url: "http://x-a:8000"}, {name: x-b, url: "http://x-b:8000"}]
"""
RTT = {"near": 5.0, "far": 160.0, "fixed": 70.0}


def topology() -> Topology:
    return parse_topology(TOPOLOGY)


NEAR_M = PoolKey("near", "m")


def never_ready() -> str | None:
    """A pool whose first replica never comes."""
    return None


def waker(**kw: float) -> Waker:
    metrics = EdgeMetrics(snapshot_age=lambda: 0.0, snapshot_version=lambda: 0.0, store_connected=lambda: 1.0)
    return Waker(
        topology=topology(),
        edge="near",
        hold_s=kw.get("hold_s", 5.0),
        max_held=int(kw.get("max_held", 10)),
        metrics=metrics,
    )


def snapshot(**changes: dict[str, object]) -> Snapshot:
    topo = topology()
    regions = {
        r.name: initial_state(r, now=0.0).model_copy(update=changes.get(r.name, {})) for r in topo.regions
    }
    return Snapshot(version=1, regions=regions)


def outcome(w: Waker, name: str) -> float:
    return w.metrics.registry.get_sample_value("meridian_edge_wake_outcomes_total", {"outcome": name}) or 0.0


def test_the_nearest_region_with_a_pool_that_scales_to_zero_is_woken_unless_operators_turned_it_off() -> None:
    w = waker()
    assert w.region("m", snapshot(), RTT.__getitem__) == "near"
    assert w.region("m", snapshot(near={"drained": True}), RTT.__getitem__) == "far"
    assert w.region("m", snapshot(near={"weight": 0}, far={"drained": True}), RTT.__getitem__) is None
    assert w.region("other", snapshot(), RTT.__getitem__) is None  # no pool of it scales to zero


async def test_a_held_request_goes_on_news_once_ready_and_is_bounded_in_number_and_time() -> None:
    w = waker(hold_s=0.2, max_held=1)
    news = asyncio.Event()
    ready: list[str] = []
    first = asyncio.create_task(w.hold(NEAR_M, lambda: ready[0] if ready else None, news.wait))
    await asyncio.sleep(0)
    assert w.held[NEAR_M] == 1
    assert await w.hold(NEAR_M, lambda: "plan", news.wait) is None  # beyond max_held: at once
    assert outcome(w, "full") == 1
    ready.append("plan")
    news.set()
    assert await first == "plan" and outcome(w, "served") == 1
    assert w.held[NEAR_M] == 0
    assert await w.hold(NEAR_M, never_ready, asyncio.Event().wait) is None  # never ready: 0.2 s
    assert outcome(w, "timeout") == 1


def test_wake_marks_count_while_fresh_and_malformed_ones_count_nothing() -> None:
    now = 1_000_000.0
    marks = {
        b"edge-a/1": wake_mark(3, now - 1).encode(),
        b"edge-b/2": wake_mark(2, now - WAKE_FRESH_S - 1).encode(),  # its edge stopped without clearing it
        b"edge-c/3": b"garbage",
    }
    assert woken(marks, now) == 3


def test_forged_wake_marks_cannot_keep_a_pool_awake_or_count_without_bound() -> None:
    """What an edge credential can write to a wake hash: a mark dated forever, or NaN, or far in the
    future, counts nothing; a huge count counts at most MOST_HELD."""
    now = 1_000_000.0
    forged = {b"x/1": b"5 inf", b"x/2": b"5 nan", b"x/3": wake_mark(5, now + 3600).encode()}
    assert woken(forged, now) == 0
    assert woken({b"x/4": wake_mark(10**12, now).encode()}, now) == MOST_HELD


async def test_one_tenant_holds_at_most_half_and_a_cancelled_hold_lets_go_at_once() -> None:
    w = waker(max_held=4)
    never = asyncio.Event()
    hog = [asyncio.create_task(w.hold(NEAR_M, never_ready, never.wait, "hog")) for _ in range(3)]
    await asyncio.sleep(0)
    assert w.by_tenant == {"hog": 2} and outcome(w, "full") == 1  # its third: beyond its half, at once
    assert await hog[2] is None
    other = asyncio.create_task(w.hold(NEAR_M, never_ready, never.wait, "other"))
    await asyncio.sleep(0)
    assert w.by_tenant == {"hog": 2, "other": 1}  # another tenant finds room
    for t in [*hog[:2], other]:  # their clients left: the handlers are cancelled
        t.cancel()
    await asyncio.gather(*hog[:2], other, return_exceptions=True)
    assert w.by_tenant == {} and w.held[NEAR_M] == 0
