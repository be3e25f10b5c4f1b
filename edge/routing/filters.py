"""The replica choice's filters (pure, no I/O): each keeps the candidates a request should go to among those
it is given, and never keeps none — a filter that would leave nothing keeps everything (a request is
served somewhere rather than refused). Each returns (what it kept, a note for the pick's "why", or None
when it changed nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge.routing.candidates import Ask, Candidate, signalled


class Filter(Protocol):
    def __call__(self, pool: Sequence[Candidate], ask: Ask) -> tuple[Sequence[Candidate], str | None]: ...


def room(pool: Sequence[Candidate], ask: Ask) -> tuple[Sequence[Candidate], str | None]:
    """Replicas whose engine is saturated (waiting >= ``max_waiting`` or KV cache >= ``max_kv``: the Gateway
    API Inference Extension's defaults) are left out while any other has room."""
    if not signalled(pool):  # nothing is known to be saturated: no replica to build
        return pool, None
    policy = ask.policy
    kept = [
        r
        for r in pool
        if r.signals is None or not r.signals.saturated(max_waiting=policy.max_waiting, max_kv=policy.max_kv)
    ]
    if len(kept) == len(pool):
        return pool, None
    return (kept, "saturated left out") if kept else (pool, "all saturated")


def adapter(pool: Sequence[Candidate], ask: Ask) -> tuple[Sequence[Candidate], str | None]:
    """A LoRA request: replicas with its adapter loaded, else ones with a free adapter slot."""
    name = ask.adapter
    if name is None:
        return pool, None
    loaded = [r for r in pool if r.signals is not None and r.signals.has_adapter(name)]
    if loaded:
        return loaded, "adapter loaded"
    free = [r for r in pool if r.signals is not None and r.signals.free_adapter_slot()]
    if free:
        return free, "free adapter slot"
    return pool, None


FILTERS: tuple[tuple[str, Filter], ...] = (("room", room), ("adapter", adapter))
