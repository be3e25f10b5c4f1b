"""Shrinking a failing fault schedule (pure, no I/O; the caller runs the campaigns): delta debugging
(Zeller's ddmin) over the faults, so the schedule a failure is reported with is one from which no fault
can be left out and still fail — within a bounded number of campaign runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def shrink(items: Sequence[T], fails: Callable[[list[T]], bool], *, runs: int) -> tuple[list[T], int]:
    """The smallest failing sub-list found, and how many times ``fails`` was called (at most ``runs``).
    ``items`` is taken to fail; each call to ``fails`` runs one candidate (a campaign with those faults)."""
    current, n, used = list(items), 2, 0
    while len(current) >= 2 and used < runs:
        chunks = _split(current, n)
        for candidate in (*chunks, *(_without(chunks, i) for i in range(len(chunks)))):
            if len(candidate) == len(current) or used >= runs:
                continue
            used += 1
            if fails(candidate):
                current = candidate
                n = 2 if len(candidate) <= len(chunks[0]) else max(n - 1, 2)
                break
        else:
            if n >= len(current):
                break
            n = min(len(current), 2 * n)
    return current, used


def _split(items: list[T], n: int) -> list[list[T]]:
    size, extra = divmod(len(items), n)
    out, at = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(items[at : at + step])
        at += step
    return [c for c in out if c]


def _without(chunks: list[list[T]], i: int) -> list[T]:
    return [x for j, c in enumerate(chunks) if j != i for x in c]
