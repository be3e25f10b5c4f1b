"""Hedging decisions (pure): the adaptive delay and the budget."""

from __future__ import annotations

import functools
import random

from edge.transport.hedging import HedgeBudget, HedgePolicy, QuantileWindow, hedge_delay


def test_delay_is_the_quantile_plus_slack_within_floor_and_ceiling() -> None:
    w = QuantileWindow(q=0.95)
    rng = random.Random(3)
    for _ in range(500):
        w.add(0.050 + rng.random() * 0.008)  # the normal body: 50-58 ms
    est = w.estimate()
    assert est is not None and 0.0565 <= est <= 0.058
    delay = functools.partial(hedge_delay, fixed_s=None, floor_s=0.02, ceiling_s=2.0)
    assert delay(est, slack=0.0) == est
    assert delay(est, slack=0.05) > 0.058  # past every normal request: no hedge wasted on them
    assert delay(0.001, slack=0.05) == 0.02
    assert delay(5.0, slack=0.05) == 2.0
    assert delay(None, slack=0.05) == 2.0
    assert hedge_delay(est, fixed_s=0.1, floor_s=0.02, ceiling_s=2.0, slack=0.05) == 0.1


def test_budget_allows_its_ratio_of_requests_after_the_burst() -> None:
    b = HedgeBudget(ratio=0.05, burst=5.0, tokens=5.0)
    spent = 0
    for _ in range(1000):
        b.earn()
        spent += b.try_spend()
    assert spent == 5 + 50 - 1 or spent == 5 + 50  # the burst, then one per 20 requests
    assert 0.054 <= b.extra_load <= 0.055


def test_stragglers_as_common_as_the_quantiles_tail_do_not_move_the_delay_off_the_body() -> None:
    """5 % of first tokens at 2 s, the rest about 50 ms: the p95 is a straggler (a delay taken from it
    rescues nobody); the delay stays at most 3x the median, so every straggler is hedged early."""
    rng = random.Random(7)
    policy = HedgePolicy()
    for _ in range(512):
        policy.observe("r", 2.0 if rng.random() < 0.05 else rng.uniform(0.045, 0.055))
    assert policy.window("r").estimate() == 2.0  # the quantile alone: no hedge before 2 s
    assert 0.05 <= policy.delay("r") <= 3 * 0.055
    narrow = HedgePolicy()
    for _ in range(512):
        narrow.observe("r", rng.uniform(0.045, 0.055))
    assert narrow.delay("r") == hedge_delay(
        narrow.window("r").estimate(), fixed_s=None, floor_s=0.02, ceiling_s=2.0, slack=0.05
    )  # without stragglers the quantile rule stands (3x the median is further out)


def test_a_hedge_that_wins_is_charged_what_it_wasted() -> None:
    """A hedge that wins cancels its primary before a token: it gets half its token back, so the budget
    rescues twice the stragglers and ``extra_load`` counts the work wasted, not the hedges sent."""
    b = HedgeBudget(ratio=0.05, burst=1.0, tokens=0.0, win_refund=0.5)
    hedged = 0
    for i in range(1000):
        b.earn()
        if i % 10 == 0 and b.try_spend():  # a straggler every tenth request: more than the 5 % earned
            hedged += 1
            b.won()
    assert 95 <= hedged <= 100  # 10 % hedged on a 5 % budget, every hedge winning
    assert abs(b.extra_load - hedged * 0.5 / 1000) < 1e-9
