"""What the replica choice works on (pure, no I/O): the candidate replicas of one region for one request,
what the request asks of them, and the choice's settings and result types.

Candidates are built lazily: the planner hands the pipeline a ``Candidates`` sequence whose replicas are
made only when a step looks at them, so a region without fresh engine signals costs two replicas (the
two random draws), not one per replica of the region."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from fleet.signals import EngineSignals

VNODES = 100  # points per replica on the ring: keys spread within a few per cent of even
DEFAULT_WEIGHTS = (("load", 1.0), ("engine", 1.0))


@dataclass(frozen=True, slots=True)
class PickPolicy:
    max_waiting: float = 5.0
    max_kv: float = 0.8
    load_factor: float = 1.25  # c: no replica above c x the mean load
    weights: tuple[tuple[str, float], ...] = DEFAULT_WEIGHTS  # scorer -> exponent
    plain: bool = field(init=False, default=True)  # today's weights: the score has a closed form (scorers)
    # what a request without affinity key or adapter asks: one per policy, not one per request
    ask: Ask = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plain", self.weights == DEFAULT_WEIGHTS)
        object.__setattr__(self, "ask", Ask(self))


@dataclass(slots=True)  # not frozen: built per candidate per request, and frozen init costs
class Candidate:
    """What the picker knows about one candidate replica."""

    name: str
    outstanding: int  # this edge's requests in flight there
    signals: EngineSignals | None = None  # fresh engine signals (None: stale or never scraped)
    share: float = 1.0  # slow start: below 1 while ramping


@dataclass(slots=True)
class Pick:
    replica: str
    why: str
    affinity: bool = False  # chosen by its key's place on the ring (not overflowed to another)


@dataclass(slots=True)  # not frozen: built per request with an affinity key or adapter (frozen init costs 3x)
class Ask:
    """What one request asks of the replica choice in one region."""

    policy: PickPolicy
    key: int | None = None  # affinity key
    adapter: str | None = None  # LoRA adapter
    last: str | None = None  # where the key last overflowed to


class Candidates(Sequence[Candidate]):
    """A region's candidate replicas, each made on first look (``make``); ``signalled``: whether any has
    fresh engine signals; ``outstanding``: this edge's requests in flight per replica (the ring's bound is
    summed from it without making every replica)."""

    __slots__ = ("_index", "_made", "_make", "names", "outstanding", "signalled")

    def __init__(
        self,
        names: Sequence[str],
        make: Callable[[str], Candidate],
        *,
        signalled: bool,
        outstanding: Mapping[str, int],
    ) -> None:
        self.names, self._make, self.signalled, self.outstanding = names, make, signalled, outstanding
        self._made: dict[int, Candidate] = {}  # by index, as made (a dict: most requests look at two)
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, i: int) -> Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, i: int | slice) -> Candidate | Sequence[Candidate]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.names)))]
        if i < 0:
            i += len(self.names)
        made = self._made
        r = made.get(i)
        if r is None:
            r = made[i] = self._make(self.names[i])
        return r

    def __iter__(self) -> Iterator[Candidate]:
        for i in range(len(self.names)):
            yield self[i]

    def named(self, name: str) -> Candidate | None:
        """The candidate called ``name`` (None: not one of them), made alone."""
        index = self._index
        if index is None:
            index = self._index = {n: i for i, n in enumerate(self.names)}
        i = index.get(name)
        return None if i is None else self[i]

    def outstanding_sum(self) -> int:
        """This edge's requests in flight over all the candidates."""
        count = self.outstanding.get
        return sum([count(n, 0) for n in self.names])


class Counts(Candidates):
    """A region's candidates when all that is known of each is this edge's count of requests in flight
    there: each made from the live count when looked at (cheap and the same on a second look, so no
    candidate is kept), and the view itself — with its by-name index — reused by every request while the
    region's replica list stands."""

    __slots__ = ("_count",)

    def __init__(self, names: Sequence[str], outstanding: Mapping[str, int]) -> None:
        self.names, self.signalled, self.outstanding, self._count = names, False, outstanding, outstanding.get
        self._index = None

    @overload
    def __getitem__(self, i: int) -> Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Candidate]: ...
    def __getitem__(self, i: int | slice) -> Candidate | Sequence[Candidate]:
        if type(i) is int:
            name = self.names[i]
            return Candidate(name, self._count(name, 0))
        return super().__getitem__(i)  # a slice: the base's, looking at each through this


def signalled(pool: Sequence[Candidate]) -> bool:
    """Whether any candidate has fresh engine signals (without making a lazy pool's replicas)."""
    known: bool | None = getattr(pool, "signalled", None)  # a lazy pool knows (an ABC isinstance costs 3x)
    if known is not None:
        return known
    return any(r.signals is not None for r in pool)


class Ring:
    """A consistent-hash ring over a region's replicas (every replica the topology declares)."""

    __slots__ = ("_distinct", "_names", "_points", "_walks")

    def __init__(self, names: Sequence[str], vnodes: int = VNODES) -> None:
        points = sorted((_h(f"{name}#{i}"), name) for name in names for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._names = [n for _, n in points]
        self._distinct = len(set(self._names))
        self._walks: dict[int, tuple[str, ...]] = {}  # by starting point: at most one per point

    def walk(self, key: int) -> tuple[str, ...]:
        """Distinct replicas in ring order from the key's place (made once per starting point)."""
        n = len(self._points)
        if not n:
            return ()
        start = bisect.bisect_left(self._points, key) % n
        hit = self._walks.get(start)
        if hit is None:
            hit = self._walks[start] = self._walk_from(start)
        return hit

    def _walk_from(self, start: int) -> tuple[str, ...]:
        names, n, distinct = self._names, len(self._names), self._distinct
        seen: dict[str, None] = {}  # insertion-ordered
        for i in range(n):
            seen.setdefault(names[(start + i) % n])
            if len(seen) == distinct:  # every replica met: the rest of the ring repeats them
                break
        return tuple(seen)


def slow_start_share(joined_at: float | None, now: float, *, window_s: float, floor: float = 0.1) -> float:
    """A replica's share while it ramps after joining at ``joined_at`` (None: it has always been there)."""
    if joined_at is None or window_s <= 0:
        return 1.0
    return max(floor, min(1.0, (now - joined_at) / window_s))


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
