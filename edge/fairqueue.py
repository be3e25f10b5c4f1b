"""Who goes next when a pool is saturated (pure, no I/O; takes ``now``): waiting requests in priority bands
(``critical`` before ``normal`` before ``batch``), each band fair between tenants by deficit round-robin
on the requests' token estimates (a tenant's turn is worth ``quantum`` tokens, times its weight), each band
bounded in size and in how long a request may wait. A full band refuses the newcomer; a request past its
band's wait leaves with a refusal. Batch waits least and is served last, so under a lasting overload it is
shed first and critical last."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from fleet.tenants import Priority

BANDS: tuple[Priority, ...] = ("critical", "normal", "batch")  # served in this order
MAX_TURNS = 16  # a request costs at most this many quanta: one huge prompt cannot stall its band's rotation

T = TypeVar("T")


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
        oldest request's cost; otherwise it gets a quantum (times its weight) and moves to the back."""
        queues = self.queues
        while queues:
            tenant, q = next(iter(queues.items()))
            head = q[0]
            cost = min(head.cost, MAX_TURNS * quantum)
            if self.deficit[tenant] >= cost:
                self.deficit[tenant] -= cost
                self._taken(tenant, q)
                return head
            self.deficit[tenant] += quantum * weight.get(tenant, 1.0)
            queues.move_to_end(tenant)
        return None

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
        quantum: float = 1024.0,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.limits = dict(bands)
        self.quantum = quantum
        self.weights: Mapping[str, float] = weights or {}
        self.bands: dict[Priority, _Band[T]] = {b: _Band() for b in BANDS}

    def __len__(self) -> int:
        return sum(b.size for b in self.bands.values())

    def depth(self, band: Priority) -> int:
        return self.bands[band].size

    def push(self, item: T, *, tenant: str, band: Priority, cost: int, now: float) -> Waiter[T] | None:
        """Hold ``item``; None when its band is full (the caller refuses it)."""
        b = self.bands[band]
        if b.size >= self.limits[band].size:
            return None
        w = Waiter(item, tenant, band, max(1, cost), now)
        b.push(w)
        return w

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
