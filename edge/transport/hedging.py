"""Hedging decisions (pure, no I/O): when to send a hedge and whether the budget allows it.

- ``HedgePolicy``: the one owner of the per-region windows (one per region, at the configured quantile),
  the budget and the delay; the forwarder asks it and feeds it.

- ``QuantileWindow``: a streaming estimate of a region's time-to-first-byte quantile (default p95) and
  median over its most recent samples. The hedge delay is the quantile plus a slack share of it, but never
  more than ``body_multiple`` times the median: when stragglers are as common as the quantile's tail (5 %
  of requests 40x slow), the p95 is a straggler itself and a delay taken from it rescues nobody; the
  median, the body of the distribution, is not moved by them. Clamped to [floor, ceiling] (or fixed).
- ``HedgeBudget``: a token bucket; every critical request earns ``ratio`` tokens (default 0.05), a hedge
  spends one; no tokens, no hedge. A hedge is charged by the work it wasted: one that wins cancels its
  primary before that produced a token, so it gets ``win_refund`` of its token back (default 0.5: the
  primary's queue and prefill were spent for nothing). ``extra_load`` is what was charged per request.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class QuantileWindow:
    q: float = 0.95
    size: int = 512
    min_samples: int = 20
    _values: deque[float] = field(default_factory=deque)
    _cached: float | None = None
    _median: float | None = None
    _dirty: int = 0

    def add(self, value: float) -> None:
        self._values.append(value)
        if len(self._values) > self.size:
            self._values.popleft()
        self._dirty += 1

    def estimate(self) -> float | None:
        """The ``q`` quantile of the recent samples (None: too few yet)."""
        return None if self._refresh() is None else self._cached

    def median(self) -> float | None:
        return self._refresh()

    def _refresh(self) -> float | None:
        """Re-sort at most every 16 samples; returns the median (None: too few samples)."""
        if len(self._values) < self.min_samples:
            return None
        if self._cached is None or self._dirty >= 16:
            ordered = sorted(self._values)
            self._cached = ordered[min(len(ordered) - 1, int(self.q * len(ordered)))]
            self._median = ordered[len(ordered) // 2]
            self._dirty = 0
        return self._median


def hedge_delay(
    estimate: float | None,
    *,
    fixed_s: float | None,
    floor_s: float,
    ceiling_s: float,
    slack: float = 0.0,
    median: float | None = None,
    body_multiple: float | None = None,
) -> float:
    """Seconds to wait for the primary's first byte before hedging: the quantile estimate plus ``slack``
    of it (a primary just past the quantile is jitter, not a straggler), at most ``body_multiple`` times
    the median (the stragglers move the quantile, not the median)."""
    if fixed_s is not None:
        return fixed_s
    if estimate is None:
        return ceiling_s  # no history yet: hedge only when clearly slow
    delay = estimate * (1.0 + slack)
    if median is not None and body_multiple is not None:
        delay = min(delay, median * body_multiple)
    return min(ceiling_s, max(floor_s, delay))


@dataclass(slots=True)
class HedgeBudget:
    ratio: float = 0.05
    burst: float = 5.0
    win_refund: float = 0.5
    tokens: float = 0.0
    requests: int = 0
    hedges: int = 0
    charged: float = 0.0  # tokens spent net of refunds: the work hedging wasted, in requests

    def earn(self) -> None:
        """One hedge-eligible request arrived."""
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.hedges += 1
        self.charged += 1.0
        return True

    def won(self) -> None:
        """A hedge won and its primary was cancelled before a token: part of its token back."""
        self.tokens = min(self.burst, self.tokens + self.win_refund)
        self.charged -= self.win_refund

    @property
    def extra_load(self) -> float:
        """Work hedging wasted per hedge-eligible request (a won hedge is charged ``1 - win_refund``)."""
        return self.charged / self.requests if self.requests else 0.0


def may_hedge(
    *, backup: str | None, primary: str, backup_utilization: float, max_backup_utilization: float
) -> bool:
    """A hedge goes to a different, unsaturated region, never the primary's own."""
    return backup is not None and backup != primary and backup_utilization < max_backup_utilization


@dataclass(slots=True)
class HedgePolicy:
    """Per-region time-to-first-byte windows, the hedge budget and the delay, in one place."""

    quantile: float = 0.95
    fixed_delay_s: float | None = None
    floor_s: float = 0.02
    ceiling_s: float = 2.0
    slack: float = 0.05
    body_multiple: float | None = 3.0
    max_backup_utilization: float = 0.8
    budget: HedgeBudget = field(default_factory=HedgeBudget)
    windows: dict[str, QuantileWindow] = field(default_factory=dict)

    def window(self, region: str) -> QuantileWindow:
        w = self.windows.get(region)
        if w is None:
            w = self.windows[region] = QuantileWindow(q=self.quantile)
        return w

    def observe(self, region: str, seconds: float) -> None:
        """A successful attempt's time to first byte in ``region``."""
        self.window(region).add(seconds)

    def delay(self, region: str) -> float:
        """Seconds to wait for ``region``'s first byte before hedging."""
        w = self.window(region)
        return hedge_delay(
            w.estimate(),
            fixed_s=self.fixed_delay_s,
            floor_s=self.floor_s,
            ceiling_s=self.ceiling_s,
            slack=self.slack,
            median=w.median(),
            body_multiple=self.body_multiple,
        )

    def eligible(self, *, primary: str, backup: str | None, backup_utilization: float) -> bool:
        """A hedge-eligible request arrived (it earns the budget); may it be hedged to ``backup``?"""
        self.budget.earn()
        return may_hedge(
            backup=backup,
            primary=primary,
            backup_utilization=backup_utilization,
            max_backup_utilization=self.max_backup_utilization,
        )
