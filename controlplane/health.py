"""Health hysteresis as data (pure, no I/O): fold probe results and passive signals into up/degraded/down.

A replica's health only changes after N consecutive signals agree (``rise`` to get better, ``fall`` to get
worse), so one lost probe or one slow request never flips routing. A region's health is a fold of its
replicas' health.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from fleet.state import Health

Signal = Literal["ok", "slow", "fail"]

# Which health each signal pulls towards.
TARGET: Mapping[Signal, Health] = {"ok": "up", "slow": "degraded", "fail": "down"}

# (current, target) -> which threshold governs the move; absent pairs are "no change".
TRANSITIONS: Mapping[tuple[Health, Health], Literal["rise", "fall"]] = {
    ("up", "degraded"): "fall",
    ("up", "down"): "fall",
    ("degraded", "down"): "fall",
    ("degraded", "up"): "rise",
    ("down", "degraded"): "rise",
    ("down", "up"): "rise",
}


@dataclass(frozen=True, slots=True)
class Track:
    """A replica's health plus the streak of signals pulling it elsewhere."""

    health: Health = "up"
    pending: Health | None = None
    streak: int = 0


def observe(track: Track, signal: Signal, *, rise: int, fall: int) -> Track:
    """Feed one signal; returns the new track (health changes only after a full streak)."""
    target = TARGET[signal]
    rule = TRANSITIONS.get((track.health, target))
    if rule is None:  # signal agrees with the current health: any pending move is abandoned
        return Track(health=track.health) if track.pending else track
    streak = track.streak + 1 if track.pending == target else 1
    needed = rise if rule == "rise" else fall
    if streak >= needed:
        return Track(health=target)
    return Track(health=track.health, pending=target, streak=streak)


SEVERITY: Mapping[Health, int] = {"up": 0, "degraded": 1, "down": 2}


def worse(a: Health, b: Health | None) -> Health:
    return a if b is None or SEVERITY[a] >= SEVERITY[b] else b


def passive_signal(*, requests: float, errors: float, min_requests: float = 3) -> Signal | None:
    """An edge's batch for one region as a health signal: None when too few requests to judge."""
    if requests < min_requests:
        return None
    rate = errors / requests
    if rate >= 0.5:
        return "fail"
    if rate >= 0.1:
        return "slow"
    return "ok"


def fold_region(replicas: Mapping[str, Health], off: Collection[str] = ()) -> Health:
    """A region is down with no serving replica, degraded with fewer than half up, else up. Replicas
    switched ``off`` or still starting (the autoscaler's) are not failures: they do not count."""
    if off:
        replicas = {name: h for name, h in replicas.items() if name not in off}
    if not replicas:
        return "down"
    values = list(replicas.values())
    serving = sum(1 for h in values if h != "down")
    if serving == 0:
        return "down"
    up = sum(1 for h in values if h == "up")
    return "up" if up * 2 >= len(values) else "degraded"
