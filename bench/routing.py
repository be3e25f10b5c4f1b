"""bench/routing.py: the routing decision microbenchmark (10 regions x 50 replicas), pytest-benchmark.

Run: python -m pytest bench/routing.py --benchmark-only -p no:cacheprovider
One decision = score every region for a client, order with the anti-herding draw, apply dials, choose the
backup, then pick a replica by power of two choices. Two cases: the edge's steady state (the client's
location cell already planned for this snapshot: only the per-request draw runs) and a cold decision (new
snapshot or new cell: full scoring).
"""

from __future__ import annotations

import random
from typing import Any

from edge import routing
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


def decide(rng: random.Random, i: int, cache: routing.RouteCache | None) -> str | None:
    """One request's decision and its first attempt (the replica choice), as the edge makes them."""
    kw: dict[str, Any] = {"country": None, "continent": None, "rng": rng}
    d = (
        routing.route(topology=TOPO, snapshot=SNAP, client=CLIENTS[i % 64], **kw)
        if cache is None
        else cache.route(client=CLIENTS[i % 64], **kw)
    )
    plan = routing.AttemptPlan(
        d,
        replicas=REPLICAS.__getitem__,
        outstanding=OUTSTANDING.__getitem__,
        urls=URLS,
        rng=rng,
        max_attempts=3,
    )
    first = plan.next()
    assert first is not None
    return first.replica


def test_routing_decision_planned_cell(benchmark: Any) -> None:
    rng = random.Random(7)
    cache = routing.RouteCache(TOPO, SNAP)
    counter = iter(range(10**9))
    result = benchmark(lambda: decide(rng, next(counter), cache))
    assert result is not None
    assert cache.misses == 64  # one plan per client cell, then only hits


def test_routing_decision_cold(benchmark: Any) -> None:
    rng = random.Random(7)
    counter = iter(range(10**9))
    result = benchmark(lambda: decide(rng, next(counter), None))
    assert result is not None
