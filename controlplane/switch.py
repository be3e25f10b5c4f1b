"""Region switch runs (pure, no I/O): what a run is (a drain walked down over a countdown, or a switch made at
once: a dial set to 0, a region drained), the dial a countdown stands at ``elapsed`` seconds in, and which
edges have applied a run's change (from the snapshot each edge reports it applied last, and when)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

STEP = 5  # a countdown moves the dial in steps of this many points


class SwitchRun(BaseModel):
    id: str
    region: str
    kind: Literal["drain", "switch"] = Field(
        description="drain: walked down over a countdown; switch: at once"
    )
    actor: str
    reason: str
    asked_at: float = Field(description="unix time it was asked for")
    over_s: float = Field(default=0.0, description="a drain's countdown, seconds")
    from_weight: int = Field(default=100, description="the dial when it was asked for")
    version: int | None = Field(
        default=None, description="the store version of its last change (null: walking)"
    )
    done_at: float | None = Field(default=None, description="unix time its last change landed")
    applied: dict[str, float] = Field(
        default_factory=dict, description="edge -> unix time by which it had applied the last change"
    )
    traffic_zero_at: float | None = Field(
        default=None, description="unix time of the last request any edge sent the region after the change"
    )

    def recovery_s(self, edges: int) -> float | None:
        """Seconds from being asked to every one of ``edges`` edges having applied it (None: not yet)."""
        if self.done_at is None or len(self.applied) < edges:
            return None
        return max(self.applied.values()) - self.asked_at


def traffic_stopped(done_at: float, seen: list[float], now: float, quiet_s: float) -> float | None:
    """When the region's traffic reached 0 after a change that landed at ``done_at``: the last time an edge
    reported a request to it (``seen``: report times), once nothing has come for ``quiet_s`` (None: traffic
    still comes, or not long enough quiet to say)."""
    last = max([done_at, *(t for t in seen if t > done_at)])
    return last if now - last >= quiet_s else None


def countdown_weight(from_weight: int, over_s: float, elapsed: float) -> int:
    """The dial ``elapsed`` seconds into a drain from ``from_weight`` over ``over_s``: a straight walk down,
    in steps of ``STEP`` (never above where it started), 0 at the end."""
    if over_s <= 0 or elapsed >= over_s:
        return 0
    left = from_weight * (1.0 - max(0.0, elapsed) / over_s)
    return min(from_weight, STEP * math.ceil(left / STEP - 1e-9))  # 5.0000001 is 5


def applied_by(run: SwitchRun, reports: Mapping[str, tuple[int, float]]) -> dict[str, float]:
    """``run.applied`` with every edge whose report (version applied last, when) includes the run's change:
    an edge's time is the earliest report that did (a later version includes the run's)."""
    out = dict(run.applied)
    if run.version is None:
        return out
    for edge, (version, at) in reports.items():
        if version >= run.version:
            out[edge] = min(at, out.get(edge, at))
    return out
