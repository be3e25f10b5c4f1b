"""Admission while a pool is saturated (pure, no I/O; takes ``now``). How many of this edge's requests the
pool may have in flight (``next_cap``), and who goes next (``FairQueue``): waiting requests in priority bands
(``critical`` before ``normal`` before ``batch``), each band fair between tenants by deficit round-robin
on the requests' token estimates (a tenant's turn is worth ``quantum`` tokens, times its weight), each band
bounded in size and in how long a request may wait. A full band sheds the newest request of the tenant
holding most of it (the newcomer, when that is its own tenant); a request past its band's wait leaves with
a refusal. Batch waits least and is served last, so under a lasting overload it is
shed first and critical last."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge.routing.replicas import PoolLoad
from fleet.tenants import PRIORITIES, Priority

BANDS = PRIORITIES  # served in this order
QUANTUM = 64.0  # tokens a tenant's turn is worth: about one short request, so turns interleave finely

T = TypeVar("T")


def next_cap(
    cap: int | None, inflight: int, load: PoolLoad | None, *, max_waiting: float, held: bool
) -> int | None:
    """This edge's in-flight ceiling for a pool on a fresh look at its engines (None: no ceiling).

    The fair ceiling is this edge's share of what keeps the engines just under the threshold — what they
    run plus ``max_waiting - 1`` waiting per replica — in proportion to this edge's part of their load (the
    other edges take theirs the same way). Saturated: the ceiling comes down to it, never up. Room again
    while requests are held: it rises to the fair ceiling, by one at least; with nothing held it goes.
    Signals gone stale while requests are held: up by a quarter per look, blind but bounded."""
    if cap is None and (load is None or not load.saturated):
        return None
    if load is None:
        return None if cap is None or not held else cap + max(1, cap // 4)
    target = load.running + load.replicas * max(0.0, max_waiting - 1)
    share = min(1.0, inflight / max(1.0, load.running + load.waiting))
    fair = max(1, int(target * share))
    if load.saturated:
        return fair if cap is None else min(cap, fair)
    if not held:
        return None
    assert cap is not None
    return max(cap + 1, fair)


@dataclass(frozen=True, slots=True)
class BandLimits:
    """How many requests a band holds, and how long one may wait in it."""

    size: int
    wait_s: float


@dataclass(slots=True, eq=False)
class Waiter(Generic[T]):
    """One held request: what to wake, whose it is, its band, its cost in tokens and since when it waits."""

    item: T
    tenant: str
    band: Priority
    cost: int
    since: float


class _Band(Generic[T]):
    """One band: per-tenant FIFO queues visited in round-robin order, with their deficits."""

    __slots__ = ("deficit", "queues", "size")

    def __init__(self) -> None:
        self.queues: OrderedDict[str, deque[Waiter[T]]] = OrderedDict()  # in turn order
        self.deficit: dict[str, float] = {}
        self.size = 0

    def push(self, w: Waiter[T]) -> None:
        q = self.queues.get(w.tenant)
        if q is None:
            q = self.queues[w.tenant] = deque()
            self.deficit[w.tenant] = 0.0
        q.append(w)
        self.size += 1

    def pop(self, quantum: float, weight: Mapping[str, float]) -> Waiter[T] | None:
        """Deficit round-robin: the tenant at the head of the rotation goes while its deficit covers its
        oldest request's cost; otherwise it gets a quantum (times its weight) and moves to the back. Whole
        rotations in which nobody could go are added in one step, so a small quantum costs no spinning."""
        queues, deficit = self.queues, self.deficit
        if not queues:
            return None
        idle = min(
            math.ceil((q[0].cost - deficit[t]) / (quantum * weight.get(t, 1.0))) for t, q in queues.items()
        )
        if idle > 1:
            for t in queues:
                deficit[t] += (idle - 1) * quantum * weight.get(t, 1.0)
        while True:
            tenant, q = next(iter(queues.items()))
            head = q[0]
            if deficit[tenant] >= head.cost:
                deficit[tenant] -= head.cost
                self._taken(tenant, q)
                return head
            deficit[tenant] += quantum * weight.get(tenant, 1.0)
            queues.move_to_end(tenant)

    def remove(self, w: Waiter[T]) -> bool:
        q = self.queues.get(w.tenant)
        if q is None or w not in q:
            return False
        if q[0] is w:
            self._taken(w.tenant, q)
        else:
            q.remove(w)
            self.size -= 1
        return True

    def _taken(self, tenant: str, q: deque[Waiter[T]]) -> None:
        q.popleft()
        self.size -= 1
        if not q:  # an idle tenant keeps no credit (DRR): it cannot save up turns to burst later
            del self.queues[tenant]
            del self.deficit[tenant]

    def expired(self, cutoff: float) -> list[Waiter[T]]:
        """Requests waiting since before ``cutoff``, removed (each tenant's oldest is at its head)."""
        out: list[Waiter[T]] = []
        for tenant in list(self.queues):
            q = self.queues[tenant]
            while q and q[0].since < cutoff:
                out.append(q[0])
                self._taken(tenant, q)
                if tenant not in self.queues:
                    break
        return out


class FairQueue(Generic[T]):
    def __init__(
        self,
        bands: Mapping[Priority, BandLimits],
        *,
        quantum: float = QUANTUM,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.limits = dict(bands)
        self.quantum = quantum
        self.weights: Mapping[str, float] = weights or {}
        self.bands: dict[Priority, _Band[T]] = {b: _Band() for b in BANDS}
        self._order = tuple(self.bands[b] for b in BANDS)

    def __len__(self) -> int:  # on every request through the gate: three additions, no generator
        critical, normal, batch = self._order
        return critical.size + normal.size + batch.size

    def depth(self, band: Priority) -> int:
        return self.bands[band].size

    def push(
        self, item: T, *, tenant: str, band: Priority, cost: int, now: float
    ) -> tuple[Waiter[T] | None, Waiter[T] | None]:
        """Hold ``item``: (its waiter, or None when refused; a waiter pushed out to make room, or None).
        A full band makes room by dropping the newest request of the tenant holding the most in it, unless
        that is the newcomer's own tenant: a tenant flooding a band sheds its own requests, not others'."""
        b = self.bands[band]
        dropped = None
        if b.size >= self.limits[band].size:
            hog = max(b.queues, key=lambda t: len(b.queues[t]), default=None)
            mine = len(b.queues.get(tenant, ()))
            if hog is None or hog == tenant or len(b.queues[hog]) <= mine + 1:
                return None, None
            dropped = b.queues[hog][-1]
            b.remove(dropped)
        w = Waiter(item, tenant, band, max(1, cost), now)
        b.push(w)
        return w, dropped

    def pop(self) -> Waiter[T] | None:
        """The next request to go: the highest band holding any, fair between tenants within it."""
        for band in BANDS:
            b = self.bands[band]
            if b.size:
                return b.pop(self.quantum, self.weights)
        return None

    def remove(self, w: Waiter[T]) -> bool:
        """Take back a request that no longer waits (its client left); False if it was not held."""
        return self.bands[w.band].remove(w)

    def expired(self, now: float) -> list[Waiter[T]]:
        """Requests past their band's wait, removed (the caller refuses them)."""
        out: list[Waiter[T]] = []
        for band in BANDS:
            b = self.bands[band]
            if b.size:
                out += b.expired(now - self.limits[band].wait_s)
        return out
