"""Open-loop arrival schedules (pure, no I/O; takes the random source): when each request is offered, from
whom and for whom, fixed before the run so a slow system cannot slow the offered load (no coordinated
omission) and the same seed offers the same sequence."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Rate = Callable[[float], float]  # offered requests per second at t seconds into the scenario


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # seconds from the scenario's start
    population: str  # where the client is (its edge and its X-Forwarded-For)
    tenant: str


def poisson(
    rate: Rate,
    *,
    until: float,
    peak: float,
    rng: random.Random,
    population: str,
    tenant: str,
    start: float = 0.0,
) -> list[Arrival]:
    """A non-homogeneous Poisson process of ``rate`` (never above ``peak``) on [start, until): thinning
    (Lewis and Shedler): candidate gaps at the peak rate, each kept with probability rate(t) / peak."""
    out: list[Arrival] = []
    if peak <= 0:
        return out
    t = start
    while True:
        t += -math.log(1.0 - rng.random()) / peak
        if t >= until:
            return out
        if rng.random() * peak < rate(t):
            out.append(Arrival(t, population, tenant))


def burst(
    n: int, *, at: float, population: str, tenant: str, spread_s: float = 0.0, rng: random.Random
) -> list[Arrival]:
    """``n`` requests at once (within ``spread_s``)."""
    return [Arrival(at + rng.random() * spread_s, population, tenant) for _ in range(n)]


def merged(*streams: Sequence[Arrival]) -> list[Arrival]:
    return sorted((a for s in streams for a in s), key=lambda a: a.at)


def ramp(t0: float, t1: float, low: float, high: float) -> Rate:
    """``low`` before t0, a straight line to ``high`` at t1, ``high`` after."""

    def rate(t: float) -> float:
        if t <= t0:
            return low
        if t >= t1:
            return high
        return low + (high - low) * (t - t0) / (t1 - t0)

    return rate


def spike(*, up_at: float, up_s: float, hold_s: float, down_s: float, peak: float, base: float = 0.0) -> Rate:
    """``base`` -> ``peak`` over ``up_s``, held ``hold_s``, back to ``base`` over ``down_s``."""
    top, fall = up_at + up_s, up_at + up_s + hold_s

    def rate(t: float) -> float:
        if t < up_at or t >= fall + down_s:
            return base
        if t < top:
            return base + (peak - base) * (t - up_at) / up_s
        if t < fall:
            return peak
        return peak - (peak - base) * (t - fall) / down_s

    return rate


def square(*, low: float, high: float, period_s: float) -> Rate:
    """``high`` for the first half of every period, ``low`` for the second."""

    def rate(t: float) -> float:
        return high if (t % period_s) < period_s / 2 else low

    return rate


def constant(value: float) -> Rate:
    return lambda _t: value


def digest(arrivals: Sequence[Arrival]) -> str:
    """A short fingerprint of a schedule: two runs with the same seed show the same one."""
    text = "\n".join(f"{a.at:.6f} {a.population} {a.tenant}" for a in arrivals)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
