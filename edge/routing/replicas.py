"""Which replica inside a region serves a request (pure, no I/O; takes the random source).

1. Filter: replicas whose engine is saturated (waiting queue >= ``max_waiting`` or KV cache >= ``max_kv``,
   from signals fresh enough to trust) are left out while any other has room.
2. LoRA: replicas with the adapter already loaded first, then ones with a free adapter slot.
3. With an affinity key: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018). The
   key's place on a ring of the region's replicas (``VNODES`` points each) names a replica; walking on from
   there, the first that is a candidate and holds fewer than ``ceil(c x (total + 1) / n)`` of this edge's
   outstanding requests takes it. Every edge hashes the same ring, so edges agree without sharing state;
   a replica that leaves moves only its own keys; none carries more than c x the mean.
4. Without a key: power of two choices on outstanding requests, weighed by the engine's queue and KV cache.

Slow start scales a replica's share (its bound on the ring, its cost in the draw) from a small floor to 1
over a window after it joins or comes back (``slow_start_share``), as Envoy's slow start does.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fleet.signals import EngineSignals

VNODES = 100  # points per replica on the ring: keys spread within a few per cent of even


@dataclass(frozen=True, slots=True)
class PickPolicy:
    max_waiting: float = 5.0
    max_kv: float = 0.8
    load_factor: float = 1.25  # c: no replica above c x the mean load


@dataclass(slots=True)  # not frozen: built per candidate per request, and frozen init costs
class Replica:
    """What the picker knows about one candidate replica."""

    name: str
    outstanding: int  # this edge's requests in flight there
    signals: EngineSignals | None = None  # fresh engine signals (None: stale or never scraped)
    share: float = 1.0  # slow start: below 1 while ramping


PLAIN = "least loaded of two"


@dataclass(slots=True)
class Pick:
    replica: str
    why: str
    affinity: bool = False  # chosen by its key's place on the ring (not overflowed to another)


class Ring:
    """A consistent-hash ring over a region's replicas (every replica the topology declares)."""

    __slots__ = ("_names", "_points")

    def __init__(self, names: Sequence[str], vnodes: int = VNODES) -> None:
        points = sorted((_h(f"{name}#{i}"), name) for name in names for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._names = [n for _, n in points]

    def walk(self, key: int) -> Iterator[str]:
        """Distinct replicas in ring order from the key's place."""
        n = len(self._points)
        if not n:
            return
        start = bisect.bisect_left(self._points, key) % n
        seen: set[str] = set()
        for i in range(n):
            name = self._names[(start + i) % n]
            if name not in seen:
                seen.add(name)
                yield name


def slow_start_share(joined_at: float | None, now: float, *, window_s: float, floor: float = 0.1) -> float:
    """A replica's share while it ramps after joining at ``joined_at`` (None: it has always been there)."""
    if joined_at is None or window_s <= 0:
        return 1.0
    return max(floor, min(1.0, (now - joined_at) / window_s))


def pick(
    candidates: Sequence[Replica],
    *,
    key: int | None,
    adapter: str | None,
    ring: Ring,
    policy: PickPolicy,
    rng: random.Random,
    last: str | None = None,
) -> Pick | None:
    """The replica for one request among ``candidates`` (health, breakers, model already applied).
    ``last``: where this edge sent the key's previous request when it overflowed its ring replica (that
    replica holds the conversation's newest prefix; it is tried first while it has room, and the key goes
    home to its ring replica when it has not)."""
    if not candidates:
        return None
    pool, why = _filtered(candidates, adapter, policy)
    if key is not None:
        chosen, on_key = _bounded(pool, key, ring, policy.load_factor, last)
        if on_key:
            return Pick(chosen.name, f"{why}affinity key", True)
        kept = chosen.name == last
        return Pick(chosen.name, f"{why}affinity key {'kept where it overflowed' if kept else 'overflowed'}")
    return Pick(_p2c(pool, policy, rng).name, why + PLAIN)


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """A pool's engines as their fresh signals show them: all saturated or not, and their sums."""

    saturated: bool
    running: float
    waiting: float
    replicas: int


def pool_load(candidates: Sequence[Replica], policy: PickPolicy) -> PoolLoad | None:
    """The pool's load; saturated when every candidate's engine is (a replica without fresh signals has room
    as far as anyone knows). None: no candidate has fresh signals."""
    fresh = [r.signals for r in candidates if r.signals is not None]
    if not fresh:
        return None
    full = len(fresh) == len(candidates) and all(
        s.saturated(max_waiting=policy.max_waiting, max_kv=policy.max_kv) for s in fresh
    )
    return PoolLoad(full, sum(s.running for s in fresh), sum(s.waiting for s in fresh), len(fresh))


def _filtered(
    candidates: Sequence[Replica], adapter: str | None, policy: PickPolicy
) -> tuple[Sequence[Replica], str]:
    pool: Sequence[Replica] = candidates
    why = ""
    room = [
        r
        for r in pool
        if r.signals is None or not r.signals.saturated(max_waiting=policy.max_waiting, max_kv=policy.max_kv)
    ]
    if len(room) < len(pool):
        pool, why = (room, "saturated left out; ") if room else (pool, "all saturated; ")
    if adapter is not None:
        loaded = [r for r in pool if r.signals is not None and r.signals.has_adapter(adapter)]
        if loaded:
            return loaded, why + "adapter loaded; "
        free = [r for r in pool if r.signals is not None and r.signals.free_adapter_slot()]
        if free:
            return free, why + "free adapter slot; "
    return pool, why


def _bounded(
    pool: Sequence[Replica], key: int, ring: Ring, c: float, last: str | None
) -> tuple[Replica, bool]:
    """A replica with room under the bound (its own share of it while slow-starting): where the key last
    overflowed to (its newest prefix is there), else the key's own replica, else the next along the ring.
    True when it is the key's own replica."""
    by_name = {r.name: r for r in pool}
    total = sum(r.outstanding for r in pool)
    mean_next = c * (total + 1) / len(pool)

    def room(r: Replica) -> bool:
        return r.outstanding < max(1, math.ceil(mean_next * r.share))

    walk = [by_name[n] for n in ring.walk(key) if n in by_name]  # a non-candidate is skipped, as if gone
    kept = by_name.get(last) if last is not None else None
    if kept is not None and room(kept):  # the conversation's newest prefix is there
        return kept, False
    if room(walk[0]):
        return walk[0], True
    for r in walk[1:]:
        if room(r):
            return r, False
    return min(pool, key=lambda r: (r.outstanding + 1) / r.share), False


def _cost(r: Replica, policy: PickPolicy) -> float:
    s = r.signals
    engine = 1.0 if s is None else 1.0 + s.waiting / policy.max_waiting + (s.kv_usage or 0.0)
    return (r.outstanding + 1) * engine / r.share


def _p2c(pool: Sequence[Replica], policy: PickPolicy, rng: random.Random) -> Replica:
    n = len(pool)
    if n == 1:
        return pool[0]
    i = int(rng.random() * n)  # two distinct draws; cheaper than rng.sample on the hot path
    j = int(rng.random() * (n - 1))
    a, b = pool[i], pool[j + 1 if j >= i else j]
    return b if _cost(b, policy) < _cost(a, policy) else a


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
