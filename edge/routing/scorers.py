"""The replica choice's scorers (pure, no I/O): each rates one candidate in 0..1, higher is better. A
replica's score is the product of its scorers' ratings, each raised to its weight (``PickPolicy.weights``:
0 switches a scorer off; the defaults, 1 and 1, are the cost the picker has always used:
(outstanding + 1) x (1 + waiting / max_waiting + KV cache) / slow-start share)."""

from __future__ import annotations

from collections.abc import Callable

from edge.routing.candidates import Candidate, PickPolicy

Scorer = Callable[[Candidate, PickPolicy], float]


def load(r: Candidate, policy: PickPolicy) -> float:
    """This edge's requests in flight there, against its slow-start share: 1 when idle at full share."""
    return r.share / (r.outstanding + 1)


def engine(r: Candidate, policy: PickPolicy) -> float:
    """The engine's own queue and KV cache (1 without fresh signals: nothing is known against it)."""
    s = r.signals
    if s is None:
        return 1.0
    return 1.0 / (1.0 + s.waiting / policy.max_waiting + (s.kv_usage or 0.0))


SCORERS: dict[str, Scorer] = {"load": load, "engine": engine}


def score(r: Candidate, policy: PickPolicy) -> float:
    """The replica's combined score in 0..1."""
    if policy.plain:  # load x engine, written out: the score every request computes twice
        s = r.signals
        if s is None:
            return r.share / (r.outstanding + 1)
        return r.share / (r.outstanding + 1) / (1.0 + s.waiting / policy.max_waiting + (s.kv_usage or 0.0))
    total = 1.0
    for name, weight in policy.weights:
        if weight:
            rating = SCORERS[name](r, policy)
            total *= rating if weight == 1.0 else rating**weight
    return total


def ratings(r: Candidate, policy: PickPolicy) -> dict[str, float]:
    """Each scorer's raw rating of ``r`` and the combined score (for the route explainer)."""
    raw = {name: round(SCORERS[name](r, policy), 4) for name, _ in policy.weights}
    return {**raw, "score": round(score(r, policy), 4)}
