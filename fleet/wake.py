"""Wake marks as the store holds them (pure, no I/O): while an edge holds requests for a pool that scaled to
zero, it keeps its count of them in ``meridian:wake:<region>:<model>`` (a hash: field the edge process,
value ``<held> <unix time>``, rewritten every second); the autoscaler sums the fresh marks and starts a first
replica for a pool at zero that has any."""

from __future__ import annotations

from collections.abc import Mapping

from fleet.state import KEY_PREFIX

KEY_WAKE = f"{KEY_PREFIX}:wake"
WAKE_TTL_S = 10.0  # a wake hash expires this long after an edge last wrote it
WAKE_FRESH_S = 5.0  # a mark counts this long after it was written
WAKE_EVERY_S = 1.0  # how often an edge holding requests rewrites its mark


def wake_key(region: str, model: str) -> str:
    return f"{KEY_WAKE}:{region}:{model}"


def wake_mark(held: int, unix_s: float) -> str:
    return f"{held} {unix_s:.3f}"


def woken(marks: Mapping[bytes, bytes] | Mapping[str, str], now: float) -> int:
    """Requests the edges hold for a pool: the sum of the marks written in the last ``WAKE_FRESH_S`` (an
    edge that stopped without clearing its mark stops counting); a malformed mark counts nothing."""
    total = 0
    for raw in marks.values():
        text = raw.decode() if isinstance(raw, bytes) else raw
        held, _, at = text.partition(" ")
        try:
            if now - float(at) <= WAKE_FRESH_S:
                total += max(0, int(held))
        except ValueError:
            continue
    return total
