"""Health hysteresis table and region folding (pure)."""

from __future__ import annotations

import pytest

from controlplane.health import Signal, Track, fold_region, observe
from fleet.state import Health


def run(signals: list[Signal], *, start: Health = "up", rise: int = 2, fall: int = 3) -> list[Health]:
    t = Track(health=start)
    out = []
    for s in signals:
        t = observe(t, s, rise=rise, fall=fall)
        out.append(t.health)
    return out


@pytest.mark.parametrize(
    ("signals", "start", "expected"),
    [
        (["fail", "fail", "fail"], "up", ["up", "up", "down"]),
        (["fail", "ok", "fail", "fail"], "up", ["up", "up", "up", "up"]),  # a streak must be unbroken
        (["ok", "ok"], "down", ["down", "up"]),
        (["ok", "fail", "ok", "ok"], "down", ["down", "down", "down", "up"]),
        (["slow", "slow", "slow"], "up", ["up", "up", "degraded"]),
        (["ok", "ok"], "degraded", ["degraded", "up"]),
        (["fail", "fail", "fail"], "degraded", ["degraded", "degraded", "down"]),
    ],
)
def test_hysteresis(signals: list[Signal], start: Health, expected: list[Health]) -> None:
    assert run(signals, start=start) == expected


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        ({"a": "up", "b": "up"}, "up"),
        ({"a": "up", "b": "down"}, "up"),
        ({"a": "down", "b": "down"}, "down"),
        ({"a": "up", "b": "down", "c": "down"}, "degraded"),
        ({"a": "degraded", "b": "degraded"}, "degraded"),
        ({}, "down"),
    ],
)
def test_fold_region(replicas: dict[str, Health], expected: Health) -> None:
    assert fold_region(replicas) == expected


def test_replicas_the_autoscaler_switched_off_or_is_starting_are_not_failures() -> None:
    replicas: dict[str, Health] = {"a": "up", "b": "down", "c": "down", "d": "down"}
    assert fold_region(replicas) == "degraded"  # three of four failed
    assert fold_region(replicas, off={"b", "c", "d"}) == "up"  # scaled down to one: it is all there is
    assert fold_region({"a": "down", "b": "down"}, off={"a", "b"}) == "down"  # at zero: nothing serves
