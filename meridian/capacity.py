"""``meridian capacity``: capacity and cost planning from recorded traffic. A history (the control plane's
per-minute traffic records, or a CSV of ``minute,region,model,requests,prompt_tokens,completion_tokens``)
becomes, per region and model, the peak and p95 load for each hour of the day, the replicas each hour needs
at a target utilization, and the monthly cost of three ways to buy them — all on demand; an on-demand
baseline plus spot burst; a reserved baseline plus spot burst — as a Markdown report with PNG plots
(matplotlib): traffic by hour, replicas by hour, monthly cost.

The planning is pure (``plan``); reading the history and drawing are the I/O around it."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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


def read_csv(path: Path) -> list[Sample]:
    """A history CSV; a row that does not parse, or whose counts are not finite and non-negative, stops
    with its line number."""
    out = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                names = ("requests", "prompt_tokens", "completion_tokens")
                counts = [float(row[k]) for k in names]
                for k, v in zip(names, counts, strict=True):
                    if not (math.isfinite(v) and v >= 0):
                        raise ValueError(f"{k} must be a finite number >= 0, got {row[k]!r}")
                out.append(
                    Sample(
                        datetime.fromisoformat(row["minute"]).astimezone(UTC),
                        row["region"],
                        row["model"],
                        *counts,
                    )
                )
            except (KeyError, ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
    return out


def read_store(url: str, regions: Iterable[str], *, days: float, now: float) -> list[Sample]:
    """The traffic the edges recorded in the store (per region and minute, kept 35 days), last ``days``:
    every edge's hashes (the topology's and every edge the store remembers), and those of before per-edge
    users."""
    import redis

    from fleet.keys import KEY_EDGES, traffic_key
    from fleet.usage import UsageRow, decode_minute, minute_of, plausible

    client = redis.Redis.from_url(url, decode_responses=True)
    regions = list(regions)
    last = minute_of(now)
    out = []
    try:
        remembered: set[str] = client.smembers(KEY_EDGES)  # type: ignore[assignment]
        edges: list[str | None] = [None, *sorted({*regions, *remembered})]
        keys = [(r, m) for r in regions for m in range(last - int(days * 1440), last + 1)]
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            with client.pipeline(transaction=False) as pipe:
                for region, minute in chunk:
                    for edge in edges:
                        pipe.hgetall(traffic_key(edge, region, minute))
                raw = pipe.execute()
            for j, (region, minute) in enumerate(chunk):
                at = datetime.fromtimestamp(minute * 60, UTC)
                rows: dict[str, UsageRow] = {}
                for got in raw[j * len(edges) : (j + 1) * len(edges)]:
                    for model, row in decode_minute(got).items():
                        if plausible(row):  # what no edge could count was forged with its credential
                            rows.setdefault(model, UsageRow()).merge(row)
                for model, row in rows.items():
                    out.append(
                        Sample(at, region, model, row.requests, row.prompt_tokens, row.completion_tokens)
                    )
    finally:
        client.close()
    return out


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


def report(plans: list[PoolPlan], a: Assumptions, out: Path, source: str) -> Path:
    """The Markdown report and its three PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    charts = draw(plans, out)
    lines = [
        "# Capacity and cost plan",
        "",
        f"From {source}; target utilization {a.target_utilization:.0%} of each replica's target, "
        f"{a.seconds_per_token * 1000:g} ms per completion token, "
        f"reserved discount {a.reserved_discount:.0%}.",
        "",
        "| region | model | peak req/s | p95 req/s (busiest hour) | replicas (min-max by hour) "
        "| all on demand $/month | on-demand baseline + spot | reserved baseline + spot |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        busiest = max(p.hours, key=lambda h: h.peak_rps)
        reps = [h.replicas for h in p.hours]
        spot, reserved = (c / p.cost_on_demand - 1 for c in (p.cost_spot_burst, p.cost_reserved_spot))
        lines.append(
            f"| {p.region} | {p.model} | {busiest.peak_rps:.2f} | {busiest.p95_rps:.2f} "
            f"| {min(reps)}-{max(reps)} | {p.cost_on_demand:,.0f} | {p.cost_spot_burst:,.0f} ({spot:+.0%}) "
            f"| {p.cost_reserved_spot:,.0f} ({reserved:+.0%}) |"
        )
    total = [
        sum(getattr(p, f) for p in plans) for f in ("cost_on_demand", "cost_spot_burst", "cost_reserved_spot")
    ]
    lines += [
        f"| **all** | | | | | **{total[0]:,.0f}** | **{total[1]:,.0f}** | **{total[2]:,.0f}** |",
        "",
        "Replicas per hour of the day (UTC):",
        "",
        "| region | model | " + " | ".join(f"{h:02d}" for h in range(24)) + " |",
        "|---|---|" + "---|" * 24,
    ]
    lines += [
        f"| {p.region} | {p.model} | " + " | ".join(str(h.replicas) for h in p.hours) + " |" for p in plans
    ]
    over = [p for p in plans if max(h.replicas for h in p.hours) > p.max_replicas]
    lines += [
        "",
        *(
            f"**{p.region} {p.model} needs up to {max(h.replicas for h in p.hours)} replicas at its peak; "
            f"its pool allows {p.max_replicas} (raise max_replicas, or add slots).**"
            for p in over
        ),
    ]
    lines += ["", *(f"![{name}]({path.name})" for name, path in charts.items()), ""]
    path = out / "capacity.md"
    path.write_text("\n".join(lines))
    return path


def draw(plans: list[PoolPlan], out: Path) -> dict[str, Path]:
    """Traffic by hour, replicas by hour, monthly cost: one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = list(range(24))
    charts = {}
    fig, ax = plt.subplots(figsize=(9, 4))
    for p in plans:
        ax.plot(hours, [h.peak_rps for h in p.hours], label=f"{p.region} {p.model} peak")
        ax.plot(hours, [h.p95_rps for h in p.hours], linestyle="--", label=f"{p.region} {p.model} p95")
    ax.set(xlabel="hour of day (UTC)", ylabel="requests / s", title="Traffic by hour")
    ax.legend(fontsize=7)
    charts["traffic by hour"] = _save(fig, out / "traffic.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    for p in plans:
        ax.step(hours, [h.replicas for h in p.hours], where="mid", label=f"{p.region} {p.model}")
    ax.set(xlabel="hour of day (UTC)", ylabel="replicas", title="Replicas needed")
    ax.legend(fontsize=7)
    charts["replicas by hour"] = _save(fig, out / "replicas.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    names = ["all on demand", "on-demand baseline + spot", "reserved baseline + spot"]
    totals = [
        sum(getattr(p, f) for p in plans) for f in ("cost_on_demand", "cost_spot_burst", "cost_reserved_spot")
    ]
    ax.bar(names, totals, color=["#888", "#4a8", "#48a"])
    ax.set(ylabel="$ per month", title="Monthly cost")
    charts["monthly cost"] = _save(fig, out / "cost.png")
    plt.close("all")
    return charts


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    return path
