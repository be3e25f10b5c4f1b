"""The replica choice's pickers (pure, no I/O; take the random source): which one of the filtered and scored
candidates serves the request.

- Without an affinity key: power of two choices — two distinct random candidates, the better score wins.
- With a key: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018). The key's
  place on a ring of the region's replicas names a replica; walking on from there, the first candidate
  that holds fewer than ``ceil(c x (total + 1) / n)`` of this edge's outstanding requests (its own share
  of that while slow-starting) takes it. Every edge hashes the same ring, so edges agree without sharing
  state; a replica that leaves moves only its own keys; none carries more than c x the mean."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import cast

from edge.routing.candidates import Candidate, Candidates, PickPolicy, Ring
from edge.routing.scorers import score


def two_choices(pool: Sequence[Candidate], policy: PickPolicy, rng: random.Random) -> Candidate:
    n = len(pool)
    if n == 1:
        return pool[0]
    i = int(rng.random() * n)  # two distinct draws; cheaper than rng.sample on the hot path
    j = int(rng.random() * (n - 1))
    a, b = pool[i], pool[j + 1 if j >= i else j]
    return b if score(b, policy) > score(a, policy) else a


def bounded_ring(
    pool: Sequence[Candidate], key: int, ring: Ring, c: float, last: str | None
) -> tuple[Candidate, bool]:
    """A replica with room under the bound: where the key last overflowed to (its newest prefix is there),
    else the key's own replica, else the next along the ring. True when it is the key's own replica. A lazy
    pool makes only the replicas the walk looks at (usually one), not all of them twice."""
    named: Callable[[str], Candidate | None]
    if hasattr(pool, "named"):  # a lazy pool (an ABC isinstance costs 3x)
        lazy = cast(Candidates, pool)
        named, total = lazy.named, lazy.outstanding_sum()
    else:
        named, total = {r.name: r for r in pool}.get, sum(r.outstanding for r in pool)
    mean_next = c * (total + 1) / len(pool)

    def room(r: Candidate) -> bool:
        return r.outstanding < max(1, math.ceil(mean_next * r.share))

    kept = named(last) if last is not None else None
    if kept is not None and room(kept):  # the conversation's newest prefix is there
        return kept, False
    home = True  # the first candidate along the ring is the key's own replica
    for name in ring.walk(key):
        r = named(name)
        if r is None:  # a non-candidate is skipped, as if gone
            continue
        if room(r):
            return r, home
        home = False
    return min(pool, key=lambda r: (r.outstanding + 1) / r.share), False
