"""Which replica inside a region serves a request (pure, no I/O; takes the random source): the Gateway API
Inference Extension's shape, filters -> scorers -> picker, one path for every request.

1. Filters (``edge.routing.filters``): saturated engines left out while another has room; a LoRA request
   to replicas with its adapter loaded, else with a free adapter slot.
2. Scorers (``edge.routing.scorers``): this edge's outstanding requests (against a slow-start share) and
   the engine's queue and KV cache, each in 0..1, combined with the weights of ``PickPolicy``.
3. Picker (``edge.routing.pickers``): with an affinity key, consistent hashing with bounded loads; without,
   the better of two random candidates.

``explain`` runs the same steps and says what each kept and each scorer's raw rating.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from edge.routing.candidates import Ask, Candidate, Pick, PickPolicy, Ring
from edge.routing.filters import FILTERS
from edge.routing.pickers import bounded_ring, two_choices
from edge.routing.scorers import ratings

PLAIN = "least loaded of two"


def pick(
    candidates: Sequence[Candidate],
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
    ask = Ask(policy, key, adapter, last) if key is not None or adapter is not None else policy.ask
    pool, why = candidates, ""
    for step in STEPS:  # the filters, each keeping what it keeps, their notes the start of the "why"
        pool, note = step(pool, ask)
        if note is not None:
            why += f"{note}; "
    if key is None:
        return Pick(two_choices(pool, policy, rng).name, why + PLAIN)
    chosen, on_key = bounded_ring(pool, key, ring, policy.load_factor, last)
    if on_key:
        return Pick(chosen.name, f"{why}affinity key", True)
    kept = chosen.name == last
    return Pick(chosen.name, f"{why}affinity key {'kept where it overflowed' if kept else 'overflowed'}")


STEPS = tuple(step for _, step in FILTERS)


def explain(candidates: Sequence[Candidate], ask: Ask) -> list[dict[str, object]]:
    """The pipeline's steps for the route explainer: each filter with what it kept, each candidate left with
    its scorers' raw ratings, and the picker used."""
    steps: list[dict[str, object]] = []
    pool = candidates
    for name, step in FILTERS:
        pool, note = step(pool, ask)
        steps.append({"filter": name, "kept": [r.name for r in pool], "note": note})
    steps.append({"scores": {r.name: ratings(r, ask.policy) for r in pool}})
    steps.append({"picker": "two choices" if ask.key is None else "bounded-load ring"})
    return steps


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """A pool's engines as their fresh signals show them: all saturated or not, and their sums."""

    saturated: bool
    running: float
    waiting: float
    replicas: int


def pool_load(candidates: Sequence[Candidate], policy: PickPolicy) -> PoolLoad | None:
    """The pool's load; saturated when every candidate's engine is (a replica without fresh signals has room
    as far as anyone knows). None: no candidate has fresh signals."""
    fresh = [r.signals for r in candidates if r.signals is not None]
    if not fresh:
        return None
    full = len(fresh) == len(candidates) and all(
        s.saturated(max_waiting=policy.max_waiting, max_kv=policy.max_kv) for s in fresh
    )
    return PoolLoad(full, sum(s.running for s in fresh), sum(s.waiting for s in fresh), len(fresh))
