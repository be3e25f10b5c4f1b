"""``meridian capacity``: capacity and cost planning from recorded traffic. A history (the control plane's
per-minute traffic records, or a CSV of ``minute,region,model,requests,prompt_tokens,completion_tokens``)
becomes, per region and model, the peak and p95 load for each hour of the day, the replicas each hour needs
at a target utilization, and the monthly cost of three ways to buy them — all on demand; an on-demand
baseline plus spot burst; a reserved baseline plus spot burst — as a Markdown report with PNG plots
(matplotlib): traffic by hour, replicas by hour, monthly cost.

This module is the planning, pure (``plan``); reading the history is ``meridian.capacity_io``'s, the report
and its plots ``meridian.capacity_report``'s."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from fleet.pools import PoolSpec
from fleet.state import Topology

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True, slots=True)
class Sample:
    """Traffic of one region and model in one minute."""

    minute: datetime
    region: str
    model: str
    requests: float
    prompt_tokens: float
    completion_tokens: float


@dataclass(frozen=True, slots=True)
class Assumptions:
    target_utilization: float = 0.7  # of a replica's target concurrency, at the planned peak
    seconds_per_token: float = 0.02  # decode time per completion token (an 8B model on one GPU: ~50 tok/s)
    prefill_tokens_per_s: float = 10_000.0
    reserved_discount: float = 0.4  # a 1-year reservation's discount off the on-demand price


@dataclass(frozen=True, slots=True)
class HourPlan:
    hour: int  # of the day, UTC
    peak_rps: float
    p95_rps: float
    concurrency: float  # at the peak (Little's law: arrivals x time in the engine)
    replicas: int


@dataclass(frozen=True, slots=True)
class PoolPlan:
    region: str
    model: str
    hours: tuple[HourPlan, ...]
    baseline: int  # replicas every hour needs
    max_replicas: int  # the pool's, for the report's warning
    cost_on_demand: float  # $ per month
    cost_spot_burst: float
    cost_reserved_spot: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else 0.0


def plan(
    samples: Iterable[Sample], pools: Mapping[tuple[str, str], PoolSpec], a: Assumptions
) -> list[PoolPlan]:
    """Per pool: each hour of the day's peak and p95 request rate over the history, the replicas its peak
    needs (concurrency / (target x utilization)), and the monthly cost of buying them three ways."""
    by: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        seconds = s.completion_tokens * a.seconds_per_token + s.prompt_tokens / a.prefill_tokens_per_s
        by[(s.region, s.model)][s.minute.hour].append((s.requests / 60.0, seconds / 60.0))  # per s, busy s/s
    plans = []
    for key, hours in sorted(by.items()):
        spec = pools.get(key)
        if spec is None:
            continue
        per_replica = spec.target.value * a.target_utilization if spec.target.metric == "concurrency" else 1.0
        rows = []
        for hour in range(24):
            got = hours.get(hour, [])
            rps = [r for r, _ in got]
            busy = [b for _, b in got]
            concurrency = max(busy, default=0.0)
            need = max(
                spec.min_replicas, math.ceil(concurrency / per_replica - 1e-9)
            )  # max_replicas: see report
            rows.append(HourPlan(hour, max(rps, default=0.0), _percentile(rps, 0.95), concurrency, need))
        baseline = min(r.replicas for r in rows)
        burst = sum(r.replicas - baseline for r in rows) * 30.4  # replica-hours a month above the baseline
        on_demand = sum(r.replicas for r in rows) * 30.4 * spec.price_on_demand_hour
        base_od = baseline * HOURS_PER_MONTH * spec.price_on_demand_hour
        base_reserved = base_od * (1 - a.reserved_discount)
        spot = burst * (spec.price_spot_hour or spec.price_on_demand_hour)
        plans.append(
            PoolPlan(
                key[0],
                key[1],
                tuple(rows),
                baseline,
                spec.max_replicas,
                on_demand,
                base_od + spot,
                base_reserved + spot,
            )
        )
    return plans


def pools_of(topology: Topology) -> dict[tuple[str, str], PoolSpec]:
    return {(r.name, p.model): p for r in topology.regions for p in r.pools}
