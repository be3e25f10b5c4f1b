"""Switch runs' pure parts: a drain's countdown walks the dial down in steps to 0 at its end, and a run knows
which edges applied its change and the measured recovery time."""

from __future__ import annotations

import itertools

from controlplane.switch import SwitchRun, applied_by, countdown_weight, traffic_stopped


def test_a_countdown_walks_the_dial_down_in_steps_and_ends_at_zero() -> None:
    walk = [countdown_weight(100, 60.0, t) for t in (0, 3, 6, 30, 57, 59.9, 60, 90)]
    assert walk == [100, 95, 90, 50, 5, 5, 0, 0]
    assert countdown_weight(40, 60.0, 0) == 40 and countdown_weight(40, 60.0, 30) == 20
    assert countdown_weight(100, 0.0, 0) == 0  # no countdown: at once
    assert all(a >= b for a, b in itertools.pairwise(walk))  # never back up


def test_a_run_counts_the_edges_that_applied_its_change_and_its_recovery_time() -> None:
    run = SwitchRun(id="r", region="eu-west-1", kind="switch", actor="o", reason="x", asked_at=100.0)
    assert applied_by(run, {"a": (9, 101.0)}) == {}  # no change landed yet: nothing to apply
    run = run.model_copy(update={"version": 7, "done_at": 100.2})
    seen = applied_by(run, {"a": (7, 100.4), "b": (6, 100.3), "c": (9, 101.5)})
    assert seen == {"a": 100.4, "c": 101.5}  # b still on an older snapshot
    run = run.model_copy(update={"applied": seen})
    assert run.recovery_s(edges=3) is None
    seen = applied_by(run, {"a": (8, 102.0), "b": (7, 100.9), "c": (9, 101.5)})
    assert seen == {"a": 100.4, "b": 100.9, "c": 101.5}  # a's earliest time is kept
    assert run.model_copy(update={"applied": seen}).recovery_s(edges=3) == 101.5 - 100.0


def test_traffic_reached_zero_at_the_last_request_once_quiet_long_enough() -> None:
    assert traffic_stopped(100.0, [99.0, 100.4, 101.2], now=103.0, quiet_s=3.0) is None  # 1.8 s quiet only
    assert traffic_stopped(100.0, [99.0, 100.4, 101.2], now=104.3, quiet_s=3.0) == 101.2
    assert traffic_stopped(100.0, [98.0], now=103.5, quiet_s=3.0) == 100.0  # none after: zero at once
