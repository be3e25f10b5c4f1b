"""The pure routing core: scores, anti-herding order, dials, backup, replica choice (seeded rng)."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping

import pytest

from controlplane.service import ServiceTracker
from edge.admission.geo import ClientPlace
from edge.routing import outcome
from edge.routing import ranking as routing
from edge.routing.candidates import Candidate, Pick, PickPolicy, Ring
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector
from edge.routing.planner import Planner
from edge.routing.replicas import pick
from edge.telemetry.observed import Observed
from fleet.state import Health, Location, RegionState, Snapshot, Topology
from fleet.topology import load_topology
from tests.fleet import ROOT

TOPO = load_topology(ROOT / "regions.yaml")
LONDON = Location(lat=51.51, lon=-0.09)
NEW_YORK = Location(lat=40.71, lon=-74.0)


def snap(**overrides: Mapping[str, object]) -> Snapshot:
    regions = {}
    for r in TOPO.regions:
        st = RegionState(name=r.name, replicas={rep.name: "up" for rep in r.replicas}, latency_ms=100.0)
        regions[r.name] = st.model_copy(update=overrides.get(r.name.replace("-", "_"), {}))
    return Snapshot(version=1, regions=regions)


def net(edge: Location, topo: Topology = TOPO) -> routing.Network:
    """The network seen from an edge at ``edge`` before it has measured anything (distance)."""
    return routing.distance_network(topo, edge)


def route(
    s: Snapshot,
    client: Location = LONDON,
    seed: int = 0,
    *,
    country: str | None = None,
    continent: str | None = None,
) -> routing.Decision:
    """A client at its nearest edge (an edge standing where the client is)."""
    return routing.route(
        topology=TOPO,
        snapshot=s,
        network=net(client),
        country=country,
        continent=continent,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize(
    ("overrides", "expected_primary", "why"),
    [
        ({}, "eu-west-1", None),
        ({"eu_west_1": {"weight": 0}}, "us-east-1", "weight 0"),
        ({"eu_west_1": {"drained": True}}, "us-east-1", "drained"),
        ({"eu_west_1": {"health": "down"}}, "us-east-1", "down"),
        ({"eu_west_1": {"utilization": 0.99}}, "us-east-1", "saturated"),
    ],
)
def test_unroutable_regions_are_skipped(
    overrides: dict[str, dict[str, object]], expected_primary: str, why: str | None
) -> None:
    d = route(snap(**overrides))
    assert d.primary == expected_primary
    eu = next(s for s in d.scores if s.region == "eu-west-1")
    assert eu.why_not == why and eu.routable is (why is None)


def test_utilization_inflates_service_time_like_a_queue() -> None:
    d = route(snap(eu_west_1={"utilization": 0.5}))
    eu = next(s for s in d.scores if s.region == "eu-west-1")
    assert eu.service_ms == pytest.approx(200.0)
    d = route(snap(eu_west_1={"utilization": 0.9}))
    assert next(s for s in d.scores if s.region == "eu-west-1").service_ms == pytest.approx(1000.0)
    assert d.primary == "us-east-1"  # a nearly saturated region loses London smoothly


@pytest.mark.parametrize(
    ("utilization", "replicas", "starting", "planned"),
    [
        (0.9, {"a": "up", "b": "up"}, 0, 0.9),  # nothing coming: as measured
        (0.9, {"a": "up", "b": "up", "c": "down", "d": "down"}, 2, 0.45),  # two more on the way: half
        (0.99, {"a": "up", "b": "down"}, 1, 0.495),  # saturated now, not once the second is up
        (1.2, {"a": "down", "b": "down"}, 2, 0.4),  # scaling from zero: the load over what comes
        (-0.1, {"a": "up"}, 3, 0.0),  # never below 0
    ],
)
def test_planned_utilization_counts_the_replicas_starting(
    utilization: float, replicas: dict[str, Health], starting: int, planned: float
) -> None:
    st = RegionState.model_construct(name="r", utilization=utilization, replicas=replicas, starting=starting)
    assert st.planned_utilization == pytest.approx(planned)


def test_a_region_scaling_up_keeps_its_clients_and_wins_them_back() -> None:
    """London's region is saturated now: with nothing coming it loses London; with three times as many
    replicas starting it keeps London (its queue drains once they are up)."""
    full = {"utilization": 0.98, "replicas": {"euw1-a": "up", "euw1-b": "up"}}
    spilled = route(snap(eu_west_1=full))
    assert spilled.primary != "eu-west-1"
    assert next(s for s in spilled.scores if s.region == "eu-west-1").why_not == "saturated"
    coming = {f"euw1-{i}": "down" for i in range(6)}  # switched on by the autoscaler, not up yet
    growing = {**full, "replicas": {"euw1-a": "up", "euw1-b": "up", **coming}}
    assert route(snap(eu_west_1=growing)).primary != "eu-west-1"  # the same slots, none of them starting
    kept = route(snap(eu_west_1={**growing, "starting": 6}))
    assert kept.primary == "eu-west-1"
    eu = next(s for s in kept.scores if s.region == "eu-west-1")
    assert eu.utilization == pytest.approx(0.245) and eu.service_ms == pytest.approx(100.0 / 0.755)


def test_degraded_pays_a_penalty() -> None:
    d = route(snap(eu_west_1={"health": "degraded"}))
    eu = next(s for s in d.scores if s.region == "eu-west-1")
    assert eu.penalty_ms == TOPO.policy.degraded_penalty_ms and eu.routable


def test_backup_is_the_next_best_in_another_failure_domain() -> None:
    d = route(snap())
    assert (d.primary, d.backup) == ("eu-west-1", "us-east-1")
    d = route(snap(), client=NEW_YORK)
    assert d.primary == "us-east-1" and d.backup != "us-east-1"


def test_dials_are_honoured_exactly_in_aggregate() -> None:
    s = snap(eu_west_1={"weight": 30})
    rng = random.Random(7)
    counts = Counter(
        routing.route(
            topology=TOPO, snapshot=s, network=net(LONDON), country=None, continent=None, rng=rng
        ).primary
        for _ in range(20_000)
    )
    assert counts["eu-west-1"] / 20_000 == pytest.approx(0.30, abs=0.015)
    assert counts["us-east-1"] / 20_000 == pytest.approx(0.70, abs=0.015)


def test_near_equal_regions_are_shared_not_herded() -> None:
    # two regions at the same distance and latency: both get traffic, roughly evenly
    topo = Topology.model_validate(
        {
            "regions": [
                {
                    "name": "a",
                    "location": {"lat": 0, "lon": 10},
                    "capacity": 1,
                    "replicas": [{"name": "a1", "url": "http://a1"}, {"name": "a2", "url": "http://a2"}],
                },
                {
                    "name": "b",
                    "location": {"lat": 0, "lon": -10},
                    "capacity": 1,
                    "replicas": [{"name": "b1", "url": "http://b1"}, {"name": "b2", "url": "http://b2"}],
                },
            ]
        }
    )
    s = Snapshot(version=1, regions={n: RegionState(name=n, latency_ms=100) for n in ("a", "b")})
    rng = random.Random(1)
    counts = Counter(
        routing.route(
            topology=topo,
            snapshot=s,
            network=net(Location(lat=0, lon=0), topo),
            country=None,
            continent=None,
            rng=rng,
        ).primary
        for _ in range(4000)
    )
    assert 0.4 < counts["a"] / 4000 < 0.6


def test_pins_restrict_to_the_pinned_regions() -> None:
    topo = Topology.model_validate(
        {**TOPO.model_dump(), "policy": {**TOPO.policy.model_dump(), "pins": {"DE": ["eu-west-1"]}}}
    )
    s = snap()
    d = routing.route(
        topology=topo, snapshot=s, network=net(NEW_YORK), country="DE", continent="EU", rng=random.Random(0)
    )
    assert d.primary == "eu-west-1" and d.backup is None and d.pinned == ("eu-west-1",)
    s = snap(eu_west_1={"drained": True})
    d = routing.route(
        topology=topo, snapshot=s, network=net(NEW_YORK), country="DE", continent="EU", rng=random.Random(0)
    )
    assert d.primary is None  # residency is never traded for availability


def test_nothing_routable_gives_no_primary() -> None:
    d = route(snap(**{n.replace("-", "_"): {"drained": True} for n in TOPO.names}))
    assert d.primary is None and d.backup is None


@pytest.mark.parametrize(
    ("outstanding", "exclude", "expected"),
    [
        ({"a": 5, "b": 0}, frozenset(), "b"),
        ({"a": 0, "b": 5}, frozenset(), "a"),
        ({"a": 0, "b": 5}, frozenset({"a"}), "b"),
        ({}, frozenset({"a", "b"}), None),
    ],
)
def test_p2c_picks_the_least_outstanding_of_two(
    outstanding: dict[str, int], exclude: frozenset[str], expected: str | None
) -> None:
    candidates = [Candidate(n, outstanding.get(n, 0)) for n in ("a", "b") if n not in exclude]
    chosen = pick(
        candidates, key=None, adapter=None, ring=Ring([]), policy=PickPolicy(), rng=random.Random(3)
    )
    assert (chosen.replica if chosen is not None else None) == expected


REPLICAS = {r.name: [rep.name for rep in r.replicas] for r in TOPO.regions}


URLS = {r.name: {rep.name: rep.base_url for rep in r.replicas} for r in TOPO.regions}


class TwoChoices:
    """The replica choice with nothing but this fleet's replica lists (no signals, no key, idle)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def replicas(self, region: str) -> list[str]:
        return REPLICAS[region]

    def choose(self, region: str, exclude: frozenset[str]) -> Pick | None:
        candidates = [Candidate(n, 0) for n in REPLICAS[region] if n not in exclude]
        return pick(candidates, key=None, adapter=None, ring=Ring([]), policy=PickPolicy(), rng=self.rng)


def attempt_plan(d: routing.Decision, max_attempts: int = 4) -> routing.AttemptPlan:
    return routing.AttemptPlan(
        d,
        chooser=TwoChoices(random.Random(0)),
        urls=URLS,
        max_attempts=max_attempts,
    )


def test_attempt_plan_connect_failure_retries_same_region_then_fails_over() -> None:
    p = attempt_plan(route(snap()))
    first = p.next()
    assert first is not None and (first.region, first.kind) == ("eu-west-1", "primary")
    assert first.url == URLS["eu-west-1"][first.replica]
    p.failed(first, "connect")
    second = p.next()
    assert second is not None and second.region == "eu-west-1" and second.replica != first.replica
    assert second.kind == "retry" and "connect" in second.why
    p.failed(second, "connect")
    third = p.next()
    assert third is not None and (third.region, third.kind) == (p.decision.backup, "failover")
    assert third.why == "connect in eu-west-1: backup region; least loaded of two"


@pytest.mark.parametrize("failure", ["status", "timeout", "throttled", "connect"])
def test_attempt_plan_tries_another_replica_of_the_region_then_the_backup(failure: str) -> None:
    """A 429, 502-504, a time-out or a connection failure is usually one replica's: the other replica of
    the same region first (a one-region fleet still gets a second attempt), then the backup region."""
    p = attempt_plan(route(snap()))
    first = p.next()
    assert first is not None
    p.failed(first, failure)
    again = p.next()
    assert again is not None and (again.region, again.kind) == ("eu-west-1", "retry")
    assert again.replica != first.replica and failure in again.why
    p.failed(again, failure)
    nxt = p.next()
    assert nxt is not None and (nxt.region, nxt.kind) == ("us-east-1", "failover")


def test_attempt_plan_retries_a_500_once_on_another_replica_then_stops() -> None:
    """A 500 may be the request's own (a query of death): it gets one more engine, no third."""
    p = attempt_plan(route(snap()))
    first = p.next()
    assert first is not None
    p.failed(first, "internal")
    again = p.next()
    assert again is not None and again.region == "eu-west-1" and again.replica != first.replica
    p.failed(again, "internal")
    assert p.next() is None


def test_attempt_plan_retries_a_500_in_the_next_region_when_its_region_has_no_other_replica() -> None:
    """An engine that broke answers 500 to everything: where it is its region's only one serving, the one
    retry goes to the next region (before, the client got the 500 until the breaker ejected it)."""
    only = REPLICAS["eu-west-1"][0]

    class OneServing(TwoChoices):  # the rest of eu-west-1's replicas switched off
        def choose(self, region: str, exclude: frozenset[str]) -> Pick | None:
            return super().choose(
                region, exclude | frozenset(REPLICAS[region][1:] if region == "eu-west-1" else ())
            )

    p = routing.AttemptPlan(route(snap()), chooser=OneServing(random.Random(0)), urls=URLS, max_attempts=4)
    first = p.next()
    assert first is not None and (first.region, first.replica) == ("eu-west-1", only)
    p.failed(first, "internal")
    again = p.next()
    assert again is not None and (again.region, again.kind) == (p.decision.backup, "failover")
    assert "internal in eu-west-1" in again.why
    p.failed(again, "internal")
    assert p.next() is None


@pytest.mark.parametrize(
    ("status", "kind", "retry", "breaker"),
    [
        (200, "ok", False, False),
        (400, "ok", False, False),
        (429, "throttled", True, False),
        (500, "internal", True, True),
        (501, "server", False, True),
        (502, "status", True, True),
        (503, "status", True, True),
        (504, "status", True, True),
        (505, "server", False, True),
    ],
)
def test_an_answer_is_classified_by_its_cause(status: int, kind: str, retry: bool, breaker: bool) -> None:
    o = outcome.answered(status)
    assert (o.kind, o.retry, o.breaker_failure, o.status) == (kind, retry, breaker, status)


def test_attempt_plan_stops_at_max_attempts() -> None:
    p = attempt_plan(route(snap()), max_attempts=3)
    for _ in range(3):
        a = p.next()
        assert a is not None
        p.failed(a, "status")
    assert p.next() is None and p.hedge() is None


def test_attempt_plan_hedges_to_the_backup_region_and_lists_candidates() -> None:
    p = attempt_plan(route(snap()))
    hedge = p.hedge()
    assert hedge is not None and (hedge.region, hedge.kind) == (p.decision.backup, "hedge")
    roles = [(c["region"], c["role"]) for c in p.candidates()]
    assert roles[0] == ("eu-west-1", "primary") and roles[1] == (p.decision.backup, "backup")
    assert [role for _, role in roles[2:]] == ["failover"] * (len(roles) - 2)  # every other region, in order


def test_ejected_regions_are_skipped_and_panic_fails_open() -> None:
    d = routing.route(
        topology=TOPO,
        snapshot=snap(),
        network=net(LONDON),
        country=None,
        continent=None,
        rng=random.Random(0),
        excluded=frozenset({"eu-west-1"}),
    )
    assert d.primary == "us-east-1" and not d.panic
    eu = next(x for x in d.scores if x.region == "eu-west-1")
    assert eu.why_not == "ejected"
    # three of four regions down: fewer than half routable -> spread over all enabled regions
    s = snap(us_east_1={"health": "down"}, us_west_2={"health": "down"}, ap_southeast_1={"health": "down"})
    counts = Counter(route(s, seed=i).primary for i in range(200))
    d = route(s)
    assert d.panic and all(x.routable for x in d.scores)
    assert counts["eu-west-1"] > 100  # London still prefers its own region when nothing is trustworthy


def test_slow_start_share_scales_the_dial() -> None:
    s = snap()
    share = {"eu-west-1": 0.25}
    rng = random.Random(5)
    counts = Counter(
        routing.route(
            topology=TOPO, snapshot=s, network=net(LONDON), country=None, continent=None, rng=rng, share=share
        ).primary
        for _ in range(8000)
    )
    assert counts["eu-west-1"] / 8000 == pytest.approx(0.25, abs=0.02)


def test_unknown_latency_is_assumed_average_not_best() -> None:
    s = snap(us_east_1={"latency_ms": None})
    d = route(s, client=NEW_YORK)
    use1 = next(x for x in d.scores if x.region == "us-east-1")
    assert use1.service_ms == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("latency", "expected_share"),
    [(100.0, 1.0), (140.0, 1.0), (300.0, 0.5), (1000.0, 0.15), (10_000.0, 0.05)],
)
def test_brownout_keeps_a_share_in_proportion_without_reordering(
    latency: float, expected_share: float
) -> None:
    s = snap(eu_west_1={"latency_ms": latency, "baseline_ms": 100.0})
    d = route(s)
    eu = next(x for x in d.scores if x.region == "eu-west-1")
    assert eu.brownout_share == pytest.approx(expected_share)
    assert d.order[0] == "eu-west-1" or d.primary != "eu-west-1"  # still ranked by its normal service time
    rng = random.Random(3)
    counts = Counter(
        routing.route(
            topology=TOPO, snapshot=s, network=net(LONDON), country=None, continent=None, rng=rng
        ).primary
        for _ in range(6000)
    )
    assert counts["eu-west-1"] / 6000 == pytest.approx(expected_share, abs=0.03)


def test_small_absolute_jitter_is_not_a_brownout() -> None:
    # 6 ms -> 15 ms is 2.5x but only 9 ms: a fast region under a little load, not a brown-out
    s = snap(eu_west_1={"latency_ms": 15.0, "baseline_ms": 6.0})
    eu = next(x for x in route(s).scores if x.region == "eu-west-1")
    assert eu.brownout_share == 1.0


def test_route_cache_plans_exactly_as_route_and_hits_per_pin_group() -> None:
    s = snap(us_east_1={"latency_ms": 104.0})
    cache = routing.RouteCache(TOPO, s, net(NEW_YORK))
    cached_rng, plain_rng = random.Random(3), random.Random(3)
    for i in range(300):
        country = ("US", "GB", None)[i % 3]
        got = routing.draw(cache.ranking(country=country, continent=None), cached_rng)
        want = routing.route(
            topology=TOPO, snapshot=s, network=net(NEW_YORK), rng=plain_rng, country=country, continent=None
        )
        assert (got.primary, got.backup, got.order) == (want.primary, want.backup, want.order)
    assert cache.misses == 1 and cache.hits == 299  # none of these clients is pinned: one plan for all


def test_route_cache_keys_on_ejections_and_shares() -> None:
    rng = random.Random(0)

    def primary(cache: routing.RouteCache, **kw: object) -> str | None:
        return routing.draw(cache.ranking(country=None, continent=None, **kw), rng).primary  # type: ignore[arg-type]

    cache = routing.RouteCache(TOPO, snap(), net(LONDON))
    assert primary(cache) == "eu-west-1"
    assert primary(cache, excluded=frozenset({"eu-west-1"})) == "us-east-1"
    assert primary(cache, share={"eu-west-1": 0.0}) == "us-east-1"
    assert primary(cache) == "eu-west-1"
    assert primary(routing.RouteCache(TOPO, snap(eu_west_1={"weight": 0}), net(LONDON))) == "us-east-1"


# --- the latency model: this edge's network, the region's service, a primary held against noise ---------


def same_place(*names: str) -> Topology:
    return Topology.model_validate(
        {
            "policy": {"tie_margin": 0.05},
            "regions": [
                {
                    "name": name,
                    "location": {"lat": 50, "lon": 0},  # the same place: only service times separate them
                    "failure_domain": name,
                    "capacity": 10,
                    "replicas": [
                        {"name": f"{name}1", "url": f"http://{name}1"},
                        {"name": f"{name}2", "url": f"http://{name}2"},
                    ],
                }
                for name in names
            ],
        }
    )


TWIN = same_place("a", "b")
TRIO = same_place("a", "b", "c")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planner(topo: Topology, edge: str, clock: Clock, seed: int = 0) -> Planner:
    """A planner whose edge has measured its round trips (the distance estimates, as if probed)."""
    p = Planner(
        topology=topo,
        edge=edge,
        outliers=OutlierDetector(),
        failback=Failback(ramp_s=0.0),
        observed=Observed(),
        rng=random.Random(seed),
        clock=clock,
        max_attempts=3,
    )
    p.observed.probed(dict(zip(topo.names, p.distance.rtt_ms, strict=True)))
    return p


def twin(a: float, b: float, **a_state: object) -> Snapshot:
    return Snapshot(
        version=1,
        regions={
            "a": RegionState(name="a", latency_ms=a).model_copy(update=a_state),
            "b": RegionState(name="b", latency_ms=b),
        },
    )


def trio(a: float, b: float, c: float, **a_state: object) -> Snapshot:
    states = {"a": RegionState(name="a", latency_ms=a).model_copy(update=a_state)}
    states |= {n: RegionState(name=n, latency_ms=ms) for n, ms in (("b", b), ("c", c))}
    return Snapshot(version=1, regions=states)


PLACE = ClientPlace(Location(lat=50, lon=0), None, None, "geoip")


@pytest.mark.parametrize(
    ("edge_rtt_ms", "edge_ttft_ms"),
    [(2.0, 102.0), (80.0, 180.0), (160.0, 260.0)],
    ids=["near edge", "far edge", "farther edge"],
)
def test_the_service_term_is_the_same_whichever_edge_measured_it(
    edge_rtt_ms: float, edge_ttft_ms: float
) -> None:
    """Each edge reports time to first token minus its own round trip: the region's service time is 100 ms
    whichever edge reported it, so every edge ranks on the same service term plus its own network."""
    seen = Observed()
    seen.probed({"eu-west-1": edge_rtt_ms})
    seen.first_token("eu-west-1", edge_ttft_ms)
    row = seen.drain()["eu-west-1"]
    assert row["service_ms"] == pytest.approx(100.0)
    tracker = ServiceTracker()
    tracker.edges("eu-west-1", row["service_ms"], now=0.0)
    s = snap(eu_west_1={"latency_ms": tracker.value["eu-west-1"]})
    d = route(s, client=NEW_YORK)  # an edge in New York, ranking on its own network only
    assert d.order == route(snap(eu_west_1={"latency_ms": 100.0}), client=NEW_YORK).order


def test_the_engine_figure_wins_over_the_edges_while_fresh() -> None:
    tracker = ServiceTracker()
    tracker.engine("eu-west-1", 40.0, now=0.0)
    tracker.edges("eu-west-1", 400.0, now=1.0)  # an edge with a stale or wrong round trip
    assert (tracker.value["eu-west-1"], tracker.source["eu-west-1"]) == (40.0, "engine")
    tracker.edges("eu-west-1", 60.0, now=60.0)  # the engine went quiet: the edges' figure is used
    assert (tracker.value["eu-west-1"], tracker.source["eu-west-1"]) == (60.0, "edges")


def test_one_edge_cannot_move_a_regions_service_time_the_others_see() -> None:
    """The edges' figure is the median of their fresh views: one edge reporting (or a forged stream in its
    name) 600 s for a region two other edges see at 100 ms leaves it at 100 ms; an infinite or negative
    figure is clamped."""
    tracker = ServiceTracker()
    for t in range(20):
        tracker.edges("eu-west-1", 100.0, now=float(t), edge="eu-west-1")
        tracker.edges("eu-west-1", 100.0, now=float(t), edge="us-east-1")
        tracker.edges("eu-west-1", math.inf, now=float(t), edge="ap-southeast-1")
    assert tracker.value["eu-west-1"] == pytest.approx(100.0)
    lone = ServiceTracker()
    lone.edges("eu-west-1", -5.0, now=0.0, edge="mallory")
    assert lone.value["eu-west-1"] == 0.0


def test_twenty_percent_noise_never_flips_the_primary_between_regions_50_ms_apart() -> None:
    clock, noise = Clock(), random.Random(11)
    p = planner(TWIN, "a", clock)
    primaries: Counter[str | None] = Counter()
    raw_best: Counter[str] = Counter()
    for _ in range(1000):
        clock.now += 1.0
        s = twin(200.0 * noise.uniform(0.8, 1.2), 250.0 * noise.uniform(0.8, 1.2))
        primaries[p.decide(PLACE, s).primary] += 1
        raw_best[min(s.regions.values(), key=lambda st: st.latency_ms or 0).name] += 1
    assert raw_best["b"] > 0  # the noise does reorder the raw scores ...
    assert len(primaries) == 1  # ... and the primary never moves


@pytest.mark.parametrize(
    "change",
    [{"health": "down"}, {"drained": True}, {"weight": 0}, {"utilization": 0.99}],
    ids=["health", "drain", "dial 0", "saturation"],
)
def test_health_drain_dial_and_saturation_move_the_primary_at_once(change: dict[str, object]) -> None:
    clock = Clock()
    p = planner(TWIN, "a", clock)
    assert p.decide(PLACE, twin(100.0, 150.0)).primary == "a"
    assert p.decide(PLACE, twin(100.0, 150.0, **change)).primary == "b"  # same instant: no hold


def test_a_better_region_takes_over_only_after_the_hold() -> None:
    clock = Clock()
    p = planner(TWIN, "a", clock)
    assert p.decide(PLACE, twin(100.0, 150.0)).primary == "a"
    better = twin(200.0, 100.0)  # b is now better by 100 ms, more than the 20 ms and 20 % margin
    assert p.decide(PLACE, better).primary == "a"  # the challenger's hold starts
    clock.now += TWIN.policy.switch_hold_s - 0.1
    assert p.decide(PLACE, better).primary == "a"
    clock.now += 0.2
    assert p.decide(PLACE, better).primary == "b"


def test_a_primary_forced_by_a_loss_yields_once_to_a_region_better_by_more_than_the_tie() -> None:
    """Its region fails and the draw lands on the second best (its numbers at that moment were noise): the
    switch margin (20 ms and 20 %) would hold it there for good; a drawn lead settles once instead."""
    clock = Clock()
    p = planner(TRIO, "a", clock)
    assert p.decide(PLACE, trio(100.0, 130.0, 140.0)).primary == "a"
    clock.now += 60.0
    assert p.decide(PLACE, trio(100.0, 140.0, 130.0, health="down")).primary == "c"  # c, at that moment
    settled = trio(100.0, 120.0, 135.0, health="down")  # b better by 11 %: past the tie, within the margin
    assert p.decide(PLACE, settled).primary == "c"  # the settling hold starts
    clock.now += TRIO.policy.settle_hold_s
    assert p.decide(PLACE, settled).primary == "b"
    clock.now += 1.0
    assert p.decide(PLACE, trio(100.0, 135.0, 120.0, health="down")).primary == "b"  # once: held now
    clock.now += TRIO.policy.switch_hold_s
    assert p.decide(PLACE, trio(100.0, 135.0, 120.0, health="down")).primary == "b"
    assert p.decide(PLACE, trio(100.0, 135.0, 120.0)).primary == "a"  # the region it stood in for is back


def _scored(region: str, score_ms: float, *, measured: bool = True) -> routing.RegionScore:
    return routing.RegionScore(
        region, True, None, score_ms, measured, 0.0, 0.0, 0.0, 100.0, score_ms, service_measured=True
    )


def _ranked(*scores: routing.RegionScore) -> routing.Ranking:
    ranked = tuple(sorted(scores, key=lambda s: s.score_ms))
    return routing.Ranking(ranked, ranked, 0, 1.0, None, False, {}, TRIO.policy)


def test_a_lead_forced_by_a_loss_keeps_its_settling_while_it_follows_estimates() -> None:
    """The failover a CI run caught: the region fails, the new lead is chosen on estimates, then follows a
    region whose estimate is 0.1 ms better than its own first measurement — that region's first measurement
    comes in a little better still (noise) and the lead is held. It must still settle: when the first
    region proves better by more than the tie margin for ``settle_hold_s`` within the window, the lead goes
    back to it (without the window it would wait for the switch margin, 20 %, for ``switch_hold_s``)."""
    rng, policy, now = random.Random(0), TRIO.policy, 100.0
    lead = routing.hold(
        routing.Lead("gone"),
        _ranked(_scored("b", 107.0, measured=False), _scored("c", 135.0, measured=False)),
        now=now,
        rng=rng,
    )
    assert lead is not None and lead.region == "b" and now < lead.settle_until  # forced by a loss: settling
    now += 0.2
    lead = routing.hold(
        lead, _ranked(_scored("b", 69.2), _scored("c", 69.1, measured=False)), now=now, rng=rng
    )
    assert lead is not None and lead.region == "c" and not lead.firm  # follows the better estimate
    now += 0.2
    lead = routing.hold(lead, _ranked(_scored("b", 69.2), _scored("c", 68.9)), now=now, rng=rng)
    assert lead is not None and lead.region == "c" and lead.firm  # measured, and held
    proven = _ranked(_scored("b", 69.0), _scored("c", 109.9))  # b better by far more than the tie (5 %)
    now += 0.2
    lead = routing.hold(lead, proven, now=now, rng=rng)
    assert lead is not None and lead.region == "c"  # the settling hold starts
    now += policy.settle_hold_s
    lead = routing.hold(lead, proven, now=now, rng=rng)
    assert lead is not None and lead.region == "b"  # within switch_hold_s of the loss: settled on b


def test_a_residency_pin_beats_latency() -> None:
    topo = Topology.model_validate(
        {**TOPO.model_dump(), "policy": {**TOPO.policy.model_dump(), "pins": {"EU": ["eu-west-1"]}}}
    )
    clock = Clock()
    p = planner(topo, "us-east-1", clock)
    london = ClientPlace(LONDON, "GB", "EU", "geoip")
    new_york = ClientPlace(NEW_YORK, "US", "NA", "geoip")
    s = snap()
    assert p.decide(new_york, s).primary == "us-east-1"
    assert p.decide(london, s).primary == "eu-west-1"  # 82 ms away from this edge, but pinned
    view = p.client_view(london)
    assert view.misrouted == "eu-west-1" and view.client_edge_ms > 80  # geo-DNS sent London to Virginia


def test_a_lead_chosen_on_estimates_follows_the_ranking_until_measured() -> None:
    clock = Clock()
    p = Planner(
        topology=TWIN,
        edge="a",
        outliers=OutlierDetector(),
        failback=Failback(ramp_s=0.0),
        observed=Observed(),
        rng=random.Random(0),
        clock=clock,
        max_attempts=3,
    )  # nothing probed yet: network terms are distance estimates
    assert p.decide(PLACE, twin(150.0, 140.0)).primary == "b"
    assert p.decide(PLACE, twin(140.0, 150.0)).primary == "a"  # no hold on estimates
    p.observed.probed({"a": 1.0, "b": 1.0})
    assert p.decide(PLACE, twin(140.0, 150.0)).primary == "a"
    assert p.leads[(None, None)].firm
    assert p.decide(PLACE, twin(150.0, 140.0)).primary == "a"  # measured now: held


def test_a_region_that_comes_back_takes_its_lead_back_at_once() -> None:
    clock = Clock()
    p = planner(TWIN, "a", clock)
    assert p.decide(PLACE, twin(100.0, 150.0)).primary == "a"
    assert p.decide(PLACE, twin(100.0, 150.0, health="down")).primary == "b"
    assert p.decide(PLACE, twin(100.0, 150.0)).primary == "a"  # failback is not a switch: no hold
