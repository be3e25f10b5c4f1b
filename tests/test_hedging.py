"""Hedging decisions (pure): the adaptive delay and the budget."""

from __future__ import annotations

import random

from edge.transport.hedging import HedgeBudget, QuantileWindow, hedge_delay


def test_delay_is_the_quantile_plus_slack_within_floor_and_ceiling() -> None:
    w = QuantileWindow(q=0.95)
    rng = random.Random(3)
    for _ in range(500):
        w.add(0.050 + rng.random() * 0.008)  # the normal body: 50-58 ms
    est = w.estimate()
    assert est is not None and 0.0565 <= est <= 0.058
    kw = {"fixed_s": None, "floor_s": 0.02, "ceiling_s": 2.0}
    assert hedge_delay(est, slack=0.0, **kw) == est  # type: ignore[arg-type]
    assert hedge_delay(est, slack=0.05, **kw) > 0.058  # past every normal request: no hedge wasted on them  # type: ignore[arg-type]
    assert hedge_delay(0.001, slack=0.05, **kw) == 0.02  # type: ignore[arg-type]
    assert hedge_delay(5.0, slack=0.05, **kw) == 2.0  # type: ignore[arg-type]
    assert hedge_delay(None, slack=0.05, **kw) == 2.0  # type: ignore[arg-type]
    assert hedge_delay(est, fixed_s=0.1, floor_s=0.02, ceiling_s=2.0, slack=0.05) == 0.1


def test_budget_allows_its_ratio_of_requests_after_the_burst() -> None:
    b = HedgeBudget(ratio=0.05, burst=5.0, tokens=5.0)
    spent = 0
    for _ in range(1000):
        b.earn()
        spent += b.try_spend()
    assert spent == 5 + 50 - 1 or spent == 5 + 50  # the burst, then one per 20 requests
    assert 0.054 <= b.extra_load <= 0.055
