"""A scenario's verdict (pure, no I/O): each criterion as the seed wrote it, scaled, with what was measured,
and the evidence that the scenario's mechanism acted — a scenario whose mechanism never acted fails however
good its numbers look."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Check:
    what: str  # "p95 TTFT during the spike"
    bound: str  # "< 0.30 s (3 s, time / 10)"
    measured: str
    passed: bool


@dataclass
class Verdict:
    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # what shows the mechanism acted
    acted: bool = False  # the mechanism's own record says it acted
    series: dict[str, Any] = field(default_factory=dict)  # for the plot
    error: str | None = None  # the scenario could not run
    schedule: str = ""  # the digest of each load it offered (same seed, same digests)

    @property
    def passed(self) -> bool:
        return self.error is None and self.acted and all(c.passed for c in self.checks)

    def check(self, what: str, bound: str, measured: str, passed: bool) -> None:
        self.checks.append(Check(what, bound, measured, passed))


def below(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def fmt_s(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f} s"


def fmt_pct(value: float) -> str:
    return f"{100 * value:.2f} %"
