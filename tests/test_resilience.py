"""Pure resilience state: outlier breakers, retry budget, backoff, failback ramp and flap hold-down."""

from __future__ import annotations

import random

import pytest

from edge.routing.failback import Failback
from edge.routing.outlier import Breaker, OutlierDetector, OutlierPolicy
from edge.transport.forwarder import retry_after_s
from edge.transport.retry_budget import RetryBudget, backoff_s

POLICY = OutlierPolicy(
    consecutive_failures=3,
    base_ejection_s=2.0,
    max_ejection_s=10.0,
    probe_interval_s=0.5,
    min_requests=10,
    failure_rate=0.5,
    window_s=10.0,
)


def test_breaker_opens_after_consecutive_failures_and_probes_in_half_open() -> None:
    b = Breaker()
    assert not b.record(False, now=0.0, policy=POLICY)
    assert not b.record(False, now=0.1, policy=POLICY)
    assert (b.record(False, now=0.2, policy=POLICY), b.phase) == (True, "open")
    assert not b.admits(1.0, POLICY) and b.ejected(1.0, POLICY)
    assert b.admits(2.3, POLICY)  # ejection over: one probation request may be planned
    assert b.admits(2.3, POLICY)  # asking again spends nothing
    b.sent(2.3, POLICY)  # the probe leaves: it holds the slot
    assert b.phase == "half_open"
    assert not b.admits(2.4, POLICY)  # the trickle: one per probe interval
    assert b.admits(2.8, POLICY)
    assert (b.record(False, now=2.5, policy=POLICY), b.phase) == (True, "open")  # probe failed: twice as long
    assert b.open_until == pytest.approx(2.5 + 4.0)
    assert b.admits(6.6, POLICY)
    b.sent(6.6, POLICY)
    assert b.record(True, now=6.7, policy=POLICY) is False
    assert (b.phase, b.ejected(6.8, POLICY)) == ("closed", False)


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    b = Breaker()
    tripped = [b.record(i % 2 == 0, now=i * 0.1, policy=POLICY) for i in range(10)]
    assert tripped[-1] and b.phase == "open"  # 50 % failures over 10 requests, never 3 in a row


def test_ejection_backoff_is_capped_and_forgotten_after_a_quiet_period() -> None:
    b = Breaker()
    now = 0.0
    for _ in range(6):
        for _ in range(3):
            b.record(False, now=now, policy=POLICY)
        assert b.phase == "open"
        assert b.open_until - now <= POLICY.max_ejection_s
        now = b.open_until
        b.sent(now, POLICY)
    b.record(True, now=now, policy=POLICY)
    now += POLICY.forget_after_s + 1
    for _ in range(3):
        b.record(False, now=now, policy=POLICY)
    assert b.open_until - now == pytest.approx(POLICY.base_ejection_s)


def test_max_ejection_fraction_keeps_half_of_a_regions_replicas() -> None:
    d = OutlierDetector(policy=POLICY, max_ejection_fraction=0.5)
    for i in range(3):
        d.record("eu", "a", False, now=i * 0.01, replica_count=2)
    for i in range(3):
        d.record("eu", "b", False, now=0.1 + i * 0.01, replica_count=2)
    assert d.replicas[("eu", "a")].phase == "open"
    assert d.replicas[("eu", "b")].phase == "closed"  # capped: 1 of 2 already out
    assert "eu" in d.ejected_regions(0.2)  # but the region itself is out (all its traffic fails)


def test_retry_budget_is_a_ratio_plus_a_floor() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0)
    for i in range(100):
        budget.deposit(i * 0.01)
    allowed = sum(budget.try_withdraw(1.0) for _ in range(100))
    assert allowed == 20 + 10  # 20 % of 100 requests + 1/s floor over the 10 s window
    assert budget.exhausted == 70
    # the window slides: old requests and retries expire
    assert budget.totals(20.0) == (0.0, 0.0)


@pytest.mark.parametrize("retry", [1, 2, 3, 8])
def test_backoff_full_jitter_is_bounded(retry: int) -> None:
    rng = random.Random(retry)
    values = [backoff_s(retry, base_s=0.01, cap_s=0.05, rng=rng) for _ in range(500)]
    assert min(values) >= 0 and max(values) <= min(0.05, 0.01 * 2 ** (retry - 1))
    assert len(set(values)) > 400  # jittered, not synchronised


def test_failback_ramps_a_recovered_region() -> None:
    f = Failback(ramp_s=30.0, min_share=0.05)
    f.observe("eu", True, 0.0)
    assert f.share("eu", 0.0) == 1.0  # present at start-up: no ramp
    f.observe("eu", False, 10.0)
    assert f.share("eu", 11.0) == 0.0
    f.observe("eu", True, 100.0)
    assert f.share("eu", 100.0) == pytest.approx(0.05)
    assert f.share("eu", 115.0) == pytest.approx(0.5)
    assert f.share("eu", 130.0) == 1.0


def test_flapping_region_is_held_down_with_growing_backoff() -> None:
    f = Failback(ramp_s=30.0, hold_base_s=5.0, flap_window_s=60.0)
    f.observe("eu", True, 0.0)
    now = 100.0
    f.observe("eu", False, now)
    f.observe("eu", True, now + 2)  # first return: allowed, ramping
    assert f.share("eu", now + 2.1) > 0
    holds = []
    t = now + 4
    for _ in range(4):  # down again within the flap window, then up-blips every 2 s
        f.observe("eu", False, t)
        hold = f.regions["eu"].hold_until - t
        holds.append(hold)
        f.observe("eu", True, t + 2)  # the blip
        assert f.share("eu", t + 2) == 0.0  # held: no traffic on the up-blip
        t += hold + 0.5
        f.observe("eu", True, t)  # stayed up past the hold: it may come back
        assert f.share("eu", t) > 0
        t += 2
    assert holds == [5.0, 10.0, 20.0, 40.0]


def test_admitted_replicas_skip_the_breakers_until_one_opens_and_again_once_all_closed() -> None:
    d = OutlierDetector(policy=POLICY, max_ejection_fraction=0.5)
    serving = ["a", "b"]
    d.record("eu", "a", True, now=0.0, replica_count=2)
    assert d.admitted("eu", serving, 0.0) is serving  # nothing ejected: no per-replica checks
    for i in range(3):
        d.record("eu", "a", False, now=0.1 + i * 0.01, replica_count=2)
    assert d.admitted("eu", serving, 0.2) == ["b"]
    assert d.admitted("us", ["x"], 0.2) == ["x"]  # other regions unaffected
    assert d.admitted("eu", serving, 2.5) == ["a", "b"]  # half-open: a's one probation request
    assert d.admitted("eu", serving, 2.6) == ["a", "b"]  # listing a as a candidate spends nothing
    d.sent("eu", "a", 2.6)  # the probe is sent: it takes the slot
    assert d.admitted("eu", serving, 2.7) == ["b"]
    d.record("eu", "a", True, now=2.8, replica_count=2)  # probe succeeded: closed again
    assert d.admitted("eu", serving, 2.9) is serving


def test_a_held_replica_is_not_planned_to_until_its_hold_passes() -> None:
    """A 429's Retry-After holds the replica (not a breaker failure): left out of the region's admitted
    replicas until then, admitted again after."""
    d = OutlierDetector()
    d.hold("r", "a", until=10.0)
    assert d.admitted("r", ["a", "b"], now=5.0) == ["b"]
    assert d.admitted("r", ["a", "b"], now=10.0) == ["a", "b"]
    assert not d.held and d.replicas == {}  # nothing left behind, no breaker touched


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("2", 2.0),
        ("0.5", 0.5),
        ("-1", 0.0),
        ("nan", 0.0),
        ("inf", 3600.0),
        ("Wed, 21 Oct 2015", 0.0),
    ],
)
def test_retry_after_is_read_in_seconds_and_bounded(header: str | None, seconds: float) -> None:
    assert retry_after_s(header) == seconds
