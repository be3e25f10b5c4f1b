"""Wake marks as the store holds them (pure, no I/O): while an edge holds requests for a pool that scaled to
zero, it keeps its count of them in ``meridian:wake:<region>:<model>`` (a hash: field the edge process,
value ``<held> <unix time>``, rewritten every second); the autoscaler sums the fresh marks and starts a first
replica for a pool at zero that has any."""

from __future__ import annotations

from collections.abc import Mapping

WAKE_TTL_S = 10.0  # a wake hash expires this long after an edge last wrote it
WAKE_FRESH_S = 5.0  # a mark counts this long after it was written
WAKE_EVERY_S = 1.0  # how often an edge holding requests rewrites its mark
MOST_HELD = 100_000  # a mark counts at most this many (an edge holds fewer: MERIDIAN_WAKE_MAX_HELD)
CLOCK_SKEW_S = 5.0  # a mark from further in the future than this is forged or from a broken clock


def wake_mark(held: int, unix_s: float) -> str:
    return f"{held} {unix_s:.3f}"


def woken(marks: Mapping[bytes, bytes] | Mapping[str, str], now: float) -> int:
    """Requests the edges hold for a pool: the sum of the marks written in the last ``WAKE_FRESH_S`` (an
    edge that stopped without clearing its mark stops counting); a malformed mark counts nothing, nor does
    one dated in the future (a forged infinite timestamp must not keep a pool awake), and a mark counts at
    most ``MOST_HELD``."""
    total = 0
    for raw in marks.values():
        text = raw.decode() if isinstance(raw, bytes) else raw
        held, _, at = text.partition(" ")
        try:
            age = now - float(at)
            if -CLOCK_SKEW_S <= age <= WAKE_FRESH_S:  # NaN and infinities fail both comparisons
                total += min(MOST_HELD, max(0, int(held)))
        except ValueError:
            continue
    return total
