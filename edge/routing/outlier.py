"""Passive outlier detection as a circuit breaker per replica and per region (pure, no I/O; takes now).

closed --(N consecutive failures, or failure rate over the window)--> open (ejected for base * 2^k s)
open --(ejection time over)--> half_open: probation admits a trickle (one request per probe interval)
half_open --success--> closed;  half_open --failure--> open again, for twice as long

Failures: connect errors, resets, 5xx and timeouts before the first byte. The table below is the whole
state machine; ``record`` and ``sent`` only apply it. ``admits`` and ``ejected`` are read-only: planning a
request never spends a half-open breaker's probe slot, sending one does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["closed", "open", "half_open"]
Event = Literal["failure_trips", "failure", "success", "timer", "probe_failure", "probe_success"]

# (phase, event) -> next phase; absent pairs keep the phase.
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    ("closed", "failure_trips"): "open",
    ("open", "timer"): "half_open",
    ("half_open", "probe_success"): "closed",
    ("half_open", "probe_failure"): "open",
}


NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    window_s: float = 10.0
    min_requests: int = 10
    failure_rate: float = 0.5
    base_ejection_s: float = 2.0
    max_ejection_s: float = 60.0
    probe_interval_s: float = 0.5
    forget_after_s: float = 60.0  # a breaker closed this long forgets earlier ejections


@dataclass(slots=True)
class Breaker:
    phase: Phase = "closed"
    consecutive: int = 0
    ejections: int = 0
    open_until: float = 0.0
    last_probe_at: float = -1e18
    closed_at: float = 0.0
    window: deque[tuple[float, bool]] = field(default_factory=deque)

    def _move(self, event: Event, now: float, policy: OutlierPolicy) -> bool:
        nxt = TRANSITIONS.get((self.phase, event))
        if nxt is None:
            return False
        if nxt == "open":
            if now - self.closed_at > policy.forget_after_s and self.phase == "closed":
                self.ejections = 0
            self.open_until = now + min(policy.max_ejection_s, policy.base_ejection_s * 2**self.ejections)
            self.ejections += 1
        elif nxt == "closed":
            self.closed_at = now
            self.consecutive = 0
            self.window.clear()
        self.phase = nxt
        return True

    def _trim(self, now: float, policy: OutlierPolicy) -> None:
        while self.window and self.window[0][0] < now - policy.window_s:
            self.window.popleft()

    def record(self, ok: bool, *, now: float, policy: OutlierPolicy, may_eject: bool = True) -> bool:
        """Feed one outcome; returns True when this outcome ejected (opened) the breaker."""
        self.tick(now, policy)
        if self.phase == "half_open":
            return self._move("probe_success" if ok else "probe_failure", now, policy) and not ok
        if self.phase == "open":
            return False  # late results of requests sent before the ejection
        self.window.append((now, ok))
        self._trim(now, policy)
        self.consecutive = 0 if ok else self.consecutive + 1
        if ok or not may_eject:
            return False
        fails = sum(1 for _, good in self.window if not good)
        tripped = self.consecutive >= policy.consecutive_failures or (
            len(self.window) >= policy.min_requests and fails / len(self.window) >= policy.failure_rate
        )
        return tripped and self._move("failure_trips", now, policy)

    def tick(self, now: float, policy: OutlierPolicy) -> None:
        if self.phase == "open" and now >= self.open_until:
            self._move("timer", now, policy)

    def ejected(self, now: float, policy: OutlierPolicy) -> bool:
        """Read-only: out of rotation now (open, or half-open with its probe slot taken this interval)?"""
        if self.phase == "closed":
            return False
        if self.phase == "open" and now < self.open_until:
            return True
        return now - self.last_probe_at < policy.probe_interval_s

    def admits(self, now: float, policy: OutlierPolicy) -> bool:
        """Read-only: may a request be planned here now? Asking never spends the probation slot."""
        return not self.ejected(now, policy)

    def sent(self, now: float, policy: OutlierPolicy) -> None:
        """An attempt was actually sent here: in half-open, that attempt is the probe and holds the slot
        for the probe interval (linkerd's failure accrual: the permit is taken on send)."""
        self.tick(now, policy)
        if self.phase == "half_open" and now - self.last_probe_at >= policy.probe_interval_s:
            self.last_probe_at = now


@dataclass(slots=True)
class OutlierDetector:
    """Breakers for every replica and region this edge sends to; caps replica ejections per region."""

    policy: OutlierPolicy = field(default_factory=OutlierPolicy)
    max_ejection_fraction: float = 0.5
    replicas: dict[tuple[str, str], Breaker] = field(default_factory=dict)
    regions: dict[str, Breaker] = field(default_factory=dict)
    # regions whose breaker is not closed: a breaker leaves "closed" only in record(), so a fleet with
    # none of these answers ejected_regions() without looking at any breaker (it runs per request)
    _not_closed: set[str] = field(default_factory=set)
    # regions with a replica breaker that is not closed: elsewhere every serving replica is admitted as is
    _replica_trouble: set[str] = field(default_factory=set)
    # replicas that asked to be left alone (429, Retry-After) -> until when; not a failure, not a breaker
    held: dict[tuple[str, str], float] = field(default_factory=dict)
    _held_regions: set[str] = field(default_factory=set)

    def hold(self, region: str, replica: str, until: float) -> None:
        """``replica`` said it takes no more until ``until`` (a 429's Retry-After): new requests are planned
        to the region's other replicas until then (all of them held: to them anyway, the store's view)."""
        key = (region, replica)
        self.held[key] = max(until, self.held.get(key, 0.0))
        self._held_regions.add(region)

    def _release(self, region: str, now: float) -> None:
        for key in [k for k, until in self.held.items() if k[0] == region and until <= now]:
            del self.held[key]
        if not any(k[0] == region for k in self.held):
            self._held_regions.discard(region)

    def record(self, region: str, replica: str, ok: bool, *, now: float, replica_count: int) -> list[str]:
        """Returns what was ejected by this outcome ("replica", "region")."""
        out = []
        b = self.replicas.get((region, replica))
        if b is None:  # not setdefault: a Breaker made per outcome only to be thrown away
            b = self.replicas[(region, replica)] = Breaker()
        may = True
        if not ok:  # only a failure can eject; counting the region's ejected replicas is O(replicas)
            ejected_now = sum(
                1 for (reg, _), br in self.replicas.items() if reg == region and br.ejected(now, self.policy)
            )
            may = (ejected_now + 1) <= self.max_ejection_fraction * replica_count
        was = b.phase
        if b.record(ok, now=now, policy=self.policy, may_eject=may):
            out.append("replica")
        if b.phase != "closed":
            self._replica_trouble.add(region)
        elif was != "closed" and all(
            br.phase == "closed" for (reg, _), br in self.replicas.items() if reg == region
        ):
            self._replica_trouble.discard(region)  # the region's last replica breaker closed again
        rb = self.regions.get(region)
        if rb is None:
            rb = self.regions[region] = Breaker()
        if rb.record(ok, now=now, policy=self.policy):
            out.append("region")
        if rb.phase != "closed":
            self._not_closed.add(region)
        return out

    def replica_admits(self, region: str, replica: str, now: float) -> bool:
        if self.held.get((region, replica), 0.0) > now:
            return False
        b = self.replicas.get((region, replica))
        return b is None or b.admits(now, self.policy)

    def admitted(self, region: str, replicas: list[str], now: float) -> list[str]:
        """The replicas of ``region`` a request may be planned to now (read-only but for expired holds)."""
        if region in self._held_regions:
            self._release(region, now)
        elif region not in self._replica_trouble:
            return replicas
        return [r for r in replicas if self.replica_admits(region, r, now)]

    def sent(self, region: str, replica: str, now: float) -> None:
        """An attempt left for ``region``/``replica``: a half-open breaker's probe slot is now taken."""
        if region in self._replica_trouble:
            b = self.replicas.get((region, replica))
            if b is not None:
                b.sent(now, self.policy)
        if region in self._not_closed:
            self.regions[region].sent(now, self.policy)

    def ejected_regions(self, now: float) -> frozenset[str]:
        if not self._not_closed:
            return NONE
        for r in [r for r in self._not_closed if self.regions[r].phase == "closed"]:
            self._not_closed.discard(r)  # closed again by a probe
        return frozenset(r for r in self._not_closed if self.regions[r].ejected(now, self.policy))
