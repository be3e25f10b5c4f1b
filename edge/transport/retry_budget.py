"""Retry budget and backoff (pure, no I/O; takes now and a random source).

The budget lets retries be at most ``ratio`` of recent requests plus ``min_per_s`` per second, over a
sliding window (tower / Envoy style), so a brown-out never becomes a retry storm.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class RetryBudget:
    ratio: float = 0.2
    min_per_s: float = 3.0
    window_s: float = 10.0
    _buckets: deque[list[float]] = field(default_factory=deque)  # [second, requests, retries]
    exhausted: int = 0

    def _bucket(self, now: float) -> list[float]:
        sec = float(int(now))
        if not self._buckets or self._buckets[-1][0] != sec:
            self._buckets.append([sec, 0.0, 0.0])
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()
        return self._buckets[-1]

    def deposit(self, now: float) -> None:
        """One original request (not a retry)."""
        self._bucket(now)[1] += 1

    def totals(self, now: float) -> tuple[float, float]:
        self._bucket(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def try_withdraw(self, now: float) -> bool:
        """Take one retry if the budget allows; counts exhaustion otherwise."""
        requests, retries = self.totals(now)
        allowed = self.ratio * requests + self.min_per_s * self.window_s
        if retries + 1 > allowed:
            self.exhausted += 1
            return False
        self._bucket(now)[2] += 1
        return True


def backoff_s(retry: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter for the ``retry``-th retry (1-based)."""
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** max(0, retry - 1)))
