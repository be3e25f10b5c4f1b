"""The pure routing core: scores, anti-herding order, dials, backup, replica choice (seeded rng)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edge import routing
from fleet.state import Location, RegionState, Snapshot, Topology
from fleet.topology import load_topology
from tests.fleet import ROOT

TOPO = load_topology(ROOT / "regions.yaml")
LONDON = Location(lat=51.51, lon=-0.09)
NEW_YORK = Location(lat=40.71, lon=-74.0)


def snap(**overrides: dict[str, object]) -> Snapshot:
    regions = {}
    for r in TOPO.regions:
        st = RegionState(name=r.name, replicas={rep.name: "up" for rep in r.replicas}, latency_ms=100.0)
        regions[r.name] = st.model_copy(update=overrides.get(r.name.replace("-", "_"), {}))
    return Snapshot(version=1, regions=regions)


def route(s: Snapshot, client: Location = LONDON, seed: int = 0, **kw: object) -> routing.Decision:
    return routing.route(
        topology=TOPO,
        snapshot=s,
        client=client,
        country=kw.get("country"),  # type: ignore[arg-type]
        continent=kw.get("continent"),
        rng=random.Random(seed),
    )  # type: ignore[arg-type]


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
        routing.route(topology=TOPO, snapshot=s, client=LONDON, country=None, continent=None, rng=rng).primary
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
            topology=topo, snapshot=s, client=Location(lat=0, lon=0), country=None, continent=None, rng=rng
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
        topology=topo, snapshot=s, client=NEW_YORK, country="DE", continent="EU", rng=random.Random(0)
    )
    assert d.primary == "eu-west-1" and d.backup is None and d.pinned == ("eu-west-1",)
    s = snap(eu_west_1={"drained": True})
    d = routing.route(
        topology=topo, snapshot=s, client=NEW_YORK, country="DE", continent="EU", rng=random.Random(0)
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
    assert (
        routing.pick_replica(["a", "b"], outstanding=outstanding, rng=random.Random(3), exclude=exclude)
        == expected
    )


REPLICAS = {r.name: [rep.name for rep in r.replicas] for r in TOPO.regions}


URLS = {r.name: {rep.name: rep.base_url for rep in r.replicas} for r in TOPO.regions}


def attempt_plan(d: routing.Decision, max_attempts: int = 4) -> routing.AttemptPlan:
    return routing.AttemptPlan(
        d,
        replicas=lambda r: REPLICAS[r],
        outstanding=lambda _: {},
        urls=URLS,
        rng=random.Random(0),
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
    assert third.why == "connect in eu-west-1: backup region"


@pytest.mark.parametrize("failure", ["status", "timeout"])
def test_attempt_plan_status_or_timeout_goes_straight_to_the_backup(failure: str) -> None:
    p = attempt_plan(route(snap()))
    first = p.next()
    assert first is not None
    p.failed(first, failure)
    nxt = p.next()
    assert nxt is not None and (nxt.region, nxt.kind) == ("us-east-1", "failover")


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
    assert roles[:2] == [("eu-west-1", "primary"), (p.decision.backup, "backup")]


def test_ejected_regions_are_skipped_and_panic_fails_open() -> None:
    d = routing.route(
        topology=TOPO,
        snapshot=snap(),
        client=LONDON,
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
            topology=TOPO, snapshot=s, client=LONDON, country=None, continent=None, rng=rng, share=share
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
        routing.route(topology=TOPO, snapshot=s, client=LONDON, country=None, continent=None, rng=rng).primary
        for _ in range(6000)
    )
    assert counts["eu-west-1"] / 6000 == pytest.approx(expected_share, abs=0.03)


def test_small_absolute_jitter_is_not_a_brownout() -> None:
    # 6 ms -> 15 ms is 2.5x but only 9 ms: a fast region under a little load, not a brown-out
    s = snap(eu_west_1={"latency_ms": 15.0, "baseline_ms": 6.0})
    eu = next(x for x in route(s).scores if x.region == "eu-west-1")
    assert eu.brownout_share == 1.0


def test_route_cache_decides_exactly_as_route_and_hits_within_a_cell() -> None:
    s = snap(us_east_1={"latency_ms": 104.0})  # near-tie leaders for New York: the draw matters
    cache = routing.RouteCache(TOPO, s)
    clients = [LONDON, NEW_YORK, Location(lat=51.5101, lon=-0.0901)]  # the last shares London's cell
    cached_rng, plain_rng = random.Random(3), random.Random(3)
    for i in range(300):
        c = clients[i % 3]
        cell = Location(lat=round(c.lat * 4) / 4, lon=round(c.lon * 4) / 4)
        got = cache.route(client=c, rng=cached_rng, country=None, continent=None)
        want = routing.route(
            topology=TOPO, snapshot=s, client=cell, rng=plain_rng, country=None, continent=None
        )
        assert (got.primary, got.backup, got.order) == (want.primary, want.backup, want.order)
    assert cache.misses == 2 and cache.hits == 298


def test_route_cache_keys_on_ejections_and_shares() -> None:
    rng = random.Random(0)
    kw: dict[str, object] = {"client": LONDON, "country": None, "continent": None, "rng": rng}
    cache = routing.RouteCache(TOPO, snap())
    assert cache.route(**kw).primary == "eu-west-1"  # type: ignore[arg-type]
    assert cache.route(excluded=frozenset({"eu-west-1"}), **kw).primary == "us-east-1"  # type: ignore[arg-type]
    assert cache.route(share={"eu-west-1": 0.0}, **kw).primary == "us-east-1"  # type: ignore[arg-type]
    assert cache.route(**kw).primary == "eu-west-1"  # type: ignore[arg-type]
    assert routing.RouteCache(TOPO, snap(eu_west_1={"weight": 0})).route(**kw).primary == "us-east-1"  # type: ignore[arg-type]
