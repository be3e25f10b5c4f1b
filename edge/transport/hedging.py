"""Hedging decisions (pure, no I/O): when to send a hedge and whether the budget allows it.

- ``HedgePolicy``: the one owner of the per-region windows (one per region, at the configured quantile),
  the budget and the delay; the forwarder asks it and feeds it.

- ``QuantileWindow``: a streaming estimate of a region's time-to-first-byte quantile (default p95) over
  its most recent samples; the hedge delay is that estimate plus a slack share of it, clamped to
  [floor, ceiling] (or a fixed delay).
- ``HedgeBudget``: a token bucket; every critical request earns ``ratio`` tokens (default 0.05, i.e. at
  most 5 % extra load), a hedge spends one; no tokens, no hedge.
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
    _dirty: int = 0

    def add(self, value: float) -> None:
        self._values.append(value)
        if len(self._values) > self.size:
            self._values.popleft()
        self._dirty += 1

    def estimate(self) -> float | None:
        if len(self._values) < self.min_samples:
            return None
        if self._cached is None or self._dirty >= 16:  # re-sort at most every 16 samples
            ordered = sorted(self._values)
            self._cached = ordered[min(len(ordered) - 1, int(self.q * len(ordered)))]
            self._dirty = 0
        return self._cached


def hedge_delay(
    estimate: float | None, *, fixed_s: float | None, floor_s: float, ceiling_s: float, slack: float = 0.0
) -> float:
    """Seconds to wait for the primary's first byte before hedging: the quantile estimate plus ``slack``
    of it (a primary just past the quantile is jitter, not a straggler)."""
    if fixed_s is not None:
        return fixed_s
    if estimate is None:
        return ceiling_s  # no history yet: hedge only when clearly slow
    return min(ceiling_s, max(floor_s, estimate * (1.0 + slack)))


@dataclass(slots=True)
class HedgeBudget:
    ratio: float = 0.05
    burst: float = 5.0
    tokens: float = 0.0
    requests: int = 0
    hedges: int = 0

    def earn(self) -> None:
        """One hedge-eligible request arrived."""
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.hedges += 1
        return True

    @property
    def extra_load(self) -> float:
        return self.hedges / self.requests if self.requests else 0.0


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
        return hedge_delay(
            self.window(region).estimate(),
            fixed_s=self.fixed_delay_s,
            floor_s=self.floor_s,
            ceiling_s=self.ceiling_s,
            slack=self.slack,
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
