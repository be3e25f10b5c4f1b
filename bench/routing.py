"""bench/routing.py: the routing decision microbenchmark (10 regions x 50 replicas), pytest-benchmark.

Run: python -m pytest bench/routing.py --benchmark-only -p no:cacheprovider -n 0
One decision = score every region from this edge, hold the primary, apply dials, choose the backup, then
pick a replica (the edge's filters -> scorers -> picker: power of two choices here). Three cases: the edge's
steady state (the planner's route cache already holds the plan for this snapshot and network: the hold
check, the per-request draw and the planner's own replica choice run), the same for requests with an
affinity key (a session or prompt_cache_key: the bounded-load ring, 1,000 sessions) and a cold decision (a
new snapshot or network view: full scoring).
"""

from __future__ import annotations

import random
import time
from typing import Any

from edge.routing import ranking as routing
from edge.routing.candidates import Candidate, Candidates, Pick, PickPolicy, Ring
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector
from edge.routing.planner import NOTHING, Planner, ReplicaChoice, Wanted
from edge.routing.ranking import Chooser
from edge.routing.replicas import pick
from edge.telemetry.observed import Observed
from fleet.state import Location, RegionState, Snapshot, Topology


def big_topology(regions: int = 10, replicas: int = 50) -> tuple[Topology, Snapshot]:
    rng = random.Random(1)
    data: dict[str, Any] = {"regions": []}
    for i in range(regions):
        data["regions"].append(
            {
                "name": f"region-{i}",
                "location": {"lat": rng.uniform(-60, 60), "lon": rng.uniform(-180, 180)},
                "capacity": 512,
                "weight": 100,
                "replicas": [
                    {"name": f"r{i}-{j}", "url": f"http://10.{i}.{j}.1:8000"} for j in range(replicas)
                ],
            }
        )
    topo = Topology.model_validate(data)
    states = {
        r.name: RegionState(
            name=r.name,
            weight=rng.choice([100, 100, 50]),
            utilization=rng.uniform(0, 0.8),
            latency_ms=rng.uniform(80, 400),
            replicas={x.name: "up" for x in r.replicas},
        )
        for r in topo.regions
    }
    return topo, Snapshot(version=1, regions=states)


TOPO, SNAP = big_topology()
REPLICAS = {r.name: [x.name for x in r.replicas] for r in TOPO.regions}
OUTSTANDING = {r: {x: i % 7 for i, x in enumerate(names)} for r, names in REPLICAS.items()}
CLIENTS = [
    Location(lat=random.Random(i).uniform(-60, 60), lon=random.Random(i + 1).uniform(-180, 180))
    for i in range(64)
]


URLS = {r: {x: f"http://{x}" for x in names} for r, names in REPLICAS.items()}


EDGE_NETWORK = routing.distance_network(TOPO, TOPO.regions[0].location)


class Place:
    def __init__(self, location: Location) -> None:
        self.location, self.country, self.continent = location, None, None


PLACES = [Place(c) for c in CLIENTS]


class TwoChoices:
    """The replica choice over this topology's replica lists and fixed outstanding counts (no planner)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def replicas(self, region: str) -> list[str]:
        return REPLICAS[region]

    def choose(self, region: str, exclude: frozenset[str]) -> Pick | None:
        out = OUTSTANDING[region]
        names = [n for n in REPLICAS[region] if n not in exclude]
        made = Candidates(names, lambda n: Candidate(n, out.get(n, 0)), signalled=False, outstanding=out)
        return pick(made, key=None, adapter=None, ring=RING, policy=POLICY, rng=self.rng)


RING, POLICY = Ring([]), PickPolicy()


def first_replica(d: routing.Decision, rng: random.Random, chooser: Chooser | None = None) -> str:
    plan = routing.AttemptPlan(d, chooser=chooser or TwoChoices(rng), urls=URLS, max_attempts=3)
    first = plan.next()
    assert first is not None
    return first.replica


def edge_planner(rng: random.Random) -> Planner:
    """The planner of an edge in the first region, with nothing ejected, held or observed yet."""
    return Planner(
        topology=TOPO,
        edge=TOPO.regions[0].name,
        outliers=OutlierDetector(),
        failback=Failback(),
        observed=Observed(),
        rng=rng,
        clock=time.monotonic,
        max_attempts=3,
    )


def test_routing_decision_planned(benchmark: Any) -> None:
    rng = random.Random(7)
    planner = edge_planner(rng)
    counter = iter(range(10**9))
    chooser = ReplicaChoice(planner, NOTHING)  # the edge's own replica choice (filters, scorers, picker)
    result = benchmark(lambda: first_replica(planner.decide(PLACES[next(counter) % 64], SNAP), rng, chooser))
    assert result is not None
    assert planner.routes is not None and planner.routes.misses == 1  # one plan, then only hits


def test_routing_decision_planned_with_an_affinity_key(benchmark: Any) -> None:
    rng = random.Random(7)
    planner = edge_planner(rng)
    sessions = [ReplicaChoice(planner, Wanted(key=rng.getrandbits(64))) for _ in range(1000)]
    counter = iter(range(10**9))

    def decide() -> str:
        i = next(counter)
        return first_replica(planner.decide(PLACES[i % 64], SNAP), rng, sessions[i % 1000])

    assert benchmark(decide) is not None
    assert planner.affinity["hit"] > 0  # the ring chose: each key's own replica had room


def test_routing_decision_cold(benchmark: Any) -> None:
    rng = random.Random(7)
    kw: dict[str, Any] = {"country": None, "continent": None, "rng": rng}
    result = benchmark(
        lambda: first_replica(routing.route(topology=TOPO, snapshot=SNAP, network=EDGE_NETWORK, **kw), rng)
    )
    assert result is not None
