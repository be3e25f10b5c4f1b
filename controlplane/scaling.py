"""Scaling decisions (pure, no I/O; takes ``now``): how many replicas each pool should run, with Kubernetes
HPA v2's semantics — a tolerance band around the target, separate scale-up and scale-down stabilization
windows, rate policies per period — plus a panic mode for a surge (scale at once to what the load needs, no
scale-down inside the panic window), scale to zero, the load a drained or down region hands to the others,
the spot/on-demand mix, and the cost ceilings (per region and global, never exceeded)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from fleet.pools import Autoscaling, PoolKey, PoolSpec


@dataclass(frozen=True, slots=True)
class PoolMemory:
    """What the autoscaler remembers of one pool between decisions."""

    current: int
    recommendations: tuple[tuple[float, int], ...] = ()  # (when, replicas the load asked for)
    changes: tuple[
        tuple[float, int], ...
    ] = ()  # (when, replicas added or removed): the rate policies' record
    panic_until: float = float("-inf")


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One pool's decision: ``commit`` it to get the memory for the next one."""

    desired: int
    reason: str
    memory: PoolMemory  # as it was, with this decision's recommendation and panic window recorded
    panic: bool = False
    capped: bool = False  # a cost ceiling held it below what the load asked for

    @property
    def previous(self) -> int:
        return self.memory.current


def commit(d: ScaleDecision, policy: Autoscaling, now: float) -> PoolMemory:
    """The memory after ``d``: its replicas, and the change in the rate policies' record."""
    keep = max(policy.scale_up_period_s, policy.scale_down_period_s)
    changes = _recent(d.memory.changes, now, keep)
    if d.desired != d.previous:
        changes = (*changes, (now, d.desired - d.previous))
    return replace(d.memory, current=d.desired, changes=changes)


def needed(spec: PoolSpec, load: float) -> int:
    """Replicas that carry ``load`` (in the target's units, summed over the pool) at the target."""
    return math.ceil(load / spec.target.value - 1e-9) if load > 0 else 0


def decide(
    spec: PoolSpec,
    policy: Autoscaling,
    memory: PoolMemory,
    *,
    load: float,
    now: float,
    absorbed: float = 0.0,
    held: int = 0,
) -> ScaleDecision:
    """The pool's desired replicas from its smoothed ``load`` plus what it ``absorbed`` for drained or down
    regions, and the requests the edges ``held`` for it (while any wait, it keeps at least one replica; at
    zero it starts one at once)."""
    current = memory.current
    own, load = load, load + absorbed
    ratio = load / (current * spec.target.value) if current else math.inf if load > 0 else 0.0
    raw = needed(spec, load)
    why = f"load {own:.1f}" + (f" + {absorbed:.1f} absorbed from drained or down regions" if absorbed else "")
    if current and abs(ratio - 1) <= policy.tolerance:
        raw, why = current, why + f" within {policy.tolerance:.0%} of target"
    else:
        why += f" for target {spec.target.value:g}/replica: {raw} needed"
    if held and raw == 0:  # the edges hold requests for it: at least one replica, now and in the windows
        raw, why = 1, f"{held} requests wait for a first replica"
    recs = _recent(
        memory.recommendations, now, max(policy.scale_up_stabilization_s, policy.scale_down_stabilization_s)
    )
    recs = (*recs, (now, raw))
    panic = memory.panic_until > now
    if current and ratio >= policy.panic_threshold:  # a surge: what the load needs, now
        panic, memory = True, replace(memory, panic_until=now + policy.panic_window_s)
        desired, why = raw, f"panic: load {ratio:.1f}x target; " + why
    else:
        desired = _stabilized(current, recs, policy, now)
        if desired != raw:
            why += f"; stabilized to {desired}"
        desired = _rate_limited(current, desired, memory.changes, policy, now)
    if panic and desired < current:
        desired, why = current, why + "; no scale-down in the panic window"
    if held and desired == 0:  # the rate policies do not hold a first replica back
        desired = 1
    floor = spec.min_replicas
    if desired < floor or desired > spec.max_replicas:
        desired = min(max(desired, floor), spec.max_replicas)
        why += f"; kept within {floor}..{spec.max_replicas}"
    return ScaleDecision(desired, why, replace(memory, recommendations=recs), panic)


def _recent(events: Sequence[tuple[float, int]], now: float, window: float) -> tuple[tuple[float, int], ...]:
    return tuple(e for e in events if now - e[0] <= window)


def _stabilized(current: int, recs: Sequence[tuple[float, int]], policy: Autoscaling, now: float) -> int:
    """HPA: scale up to the lowest recommendation of the up window, down to the highest of the down window."""
    up = min(r for t, r in recs if now - t <= policy.scale_up_stabilization_s)
    down = max(r for t, r in recs if now - t <= policy.scale_down_stabilization_s)
    desired = current
    if desired < up:
        desired = up
    if desired > down:
        desired = down
    return desired


def _rate_limited(
    current: int, desired: int, changes: Sequence[tuple[float, int]], policy: Autoscaling, now: float
) -> int:
    """HPA's policies: per period, up by the larger of a percentage and a number of replicas, down by at
    most a percentage — of the replicas at the period's start."""
    if desired > current:
        start = current - sum(c for t, c in changes if now - t < policy.scale_up_period_s and c > 0)
        most = max(math.ceil(start * (1 + policy.scale_up_percent / 100)), start + policy.scale_up_replicas)
        return min(desired, max(current, most))
    if desired < current:
        start = current - sum(c for t, c in changes if now - t < policy.scale_down_period_s and c < 0)
        least = math.floor(start * (1 - policy.scale_down_percent / 100))
        return max(desired, min(current, least))
    return desired


def mix(spec: PoolSpec, desired: int, spot_available: int | None = None) -> tuple[int, int]:
    """(on demand, spot) for ``desired`` replicas: the on-demand baseline, spot up to its share; spot the
    provider cannot give (``spot_available``) is made up on demand."""
    spot = min(max(0, desired - spec.on_demand_base), math.floor(desired * spec.max_spot_share))
    if spot_available is not None:
        spot = min(spot, spot_available)
    return desired - spot, spot


def absorbed(loads: Mapping[str, float], serving: Mapping[str, bool]) -> dict[str, float]:
    """The load each serving region takes on for the regions that are drained or down (of the same model),
    in proportion to the load it carries itself (evenly when none does): what it scales up for ahead of
    its own signals."""
    lost = sum(v for r, v in loads.items() if not serving.get(r, False))
    takers = [r for r, ok in serving.items() if ok]
    if not lost or not takers:
        return {}
    own = sum(loads.get(r, 0.0) for r in takers)
    return {r: lost * (loads.get(r, 0.0) / own if own else 1 / len(takers)) for r in takers}


def within_ceilings(
    decisions: Mapping[PoolKey, ScaleDecision],
    specs: Mapping[PoolKey, PoolSpec],
    *,
    region_ceilings: Mapping[str, float | None],
    global_ceiling: float | None,
) -> dict[PoolKey, ScaleDecision]:
    """The decisions with every cost ceiling held: while a region's (then the whole fleet's) pools would cost
    more per hour than its ceiling, the pool growing most is cut by one replica (never below its current
    count or its minimum: a ceiling stops growth, it does not shed serving replicas)."""
    out = dict(decisions)

    def cost(keys: Sequence[PoolKey]) -> float:
        return sum(specs[k].cost_hour(*mix(specs[k], out[k].desired)) for k in keys)

    scopes: list[tuple[list[PoolKey], float]] = [
        ([k for k in out if k[0] == region], ceiling)
        for region, ceiling in region_ceilings.items()
        if ceiling is not None
    ]
    if global_ceiling is not None:
        scopes.append((list(out), global_ceiling))
    for keys, ceiling in scopes:
        while cost(keys) > ceiling + 1e-9:
            growing = [k for k in keys if out[k].desired > max(out[k].previous, specs[k].min_replicas)]
            if not growing:
                break
            k = max(growing, key=lambda k: (out[k].desired - out[k].previous, k))
            d = out[k]
            out[k] = replace(
                d, desired=d.desired - 1, capped=True, reason=d.reason + f"; cost ceiling {ceiling:g} $/h"
            )
    return out
