"""When to log a failing dependency (pure, no I/O; takes ``now``): when the failure begins, every
``remind_s`` while it lasts, and when it ends — not on every failed call."""

from __future__ import annotations


class Episode:
    __slots__ = ("kind", "remind_s", "said", "since")

    def __init__(self, remind_s: float) -> None:
        self.remind_s = remind_s
        self.kind = ""
        self.since: float | None = None  # when the failure began (None: not failing)
        self.said = 0.0

    def failed(self, now: float, kind: str = "") -> float | None:
        """A call failed: how long the failure has lasted if it is to be logged now (0.0 when it begins, or
        when it changed ``kind``), else None."""
        if self.since is None or kind != self.kind:
            self.kind, self.since, self.said = kind, now, now
            return 0.0
        if now - self.said < self.remind_s:
            return None
        self.said = now
        return now - self.since

    def ended(self, now: float) -> float | None:
        """A call succeeded: how long the failure lasted if one was under way (now over), else None."""
        if self.since is None:
            return None
        lasted, self.since = now - self.since, None
        return lasted
