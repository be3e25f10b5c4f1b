"""What a pressure run saw (pure, no I/O): every offered request's outcome, and latencies in HDR histograms
per second, per tenant and per region, measured from the request's scheduled time (so a stalled system
shows as latency, not as load it never offered)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 600_000_000, 3


@dataclass(frozen=True, slots=True)
class Outcome:
    """One offered request's fate."""

    at: float  # scheduled, seconds from the scenario's start
    population: str
    tenant: str
    status: int  # HTTP status; 0: no response (connection failed)
    kind: str  # "ok", or why not: "shed", "limited", "upstream", "cut", "connect", "timeout", "http <n>"
    region: str | None  # the region that served it (X-Meridian-Region)
    ttft_s: float | None  # scheduled time to the first event
    total_s: float | None  # scheduled time to the end
    detail: str = ""  # an error's message (its start)
    ended_s: float | None = None  # scheduled time to when it ended, whatever the end (None: never recorded)
    tokens: int | None = None  # prompt + completion tokens of the answer's usage chunk (None: none came)

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


CLEAR = frozenset({"shed", "limited"})  # refused at once with an OpenAI-shaped 429/503: allowed answers


def histogram(values_s: Iterable[float]) -> HdrHistogram:
    h = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    for v in values_s:
        h.record_value(min(HIGHEST_US, max(LOWEST_US, int(v * 1e6))))
    return h


def quantile(h: HdrHistogram, q: float) -> float | None:
    """The ``q`` quantile (0..100) in seconds; None on an empty histogram."""
    if h.get_total_count() == 0:
        return None
    return float(h.get_value_at_percentile(q)) / 1e6


@dataclass
class Record:
    """Every outcome of one scenario, and views of them."""

    outcomes: list[Outcome] = field(default_factory=list)

    def window(self, start: float, end: float, **match: str) -> list[Outcome]:
        return [
            o
            for o in self.outcomes
            if start <= o.at < end and all(getattr(o, k) == v for k, v in match.items())
        ]

    def ttft(self, start: float, end: float, **match: str) -> HdrHistogram:
        return histogram(o.ttft_s for o in self.window(start, end, **match) if o.ok and o.ttft_s is not None)

    def p(self, q: float, start: float, end: float, **match: str) -> float | None:
        return quantile(self.ttft(start, end, **match), q)

    def failed_share(self, start: float, end: float, *, clear_allowed: bool = False, **match: str) -> float:
        """Failed requests' share in the window (refused with a clear answer counts as failed unless
        ``clear_allowed``)."""
        got = self.window(start, end, **match)
        if not got:
            return 0.0
        bad = [o for o in got if not o.ok and not (clear_allowed and o.kind in CLEAR)]
        return len(bad) / len(got)

    def served_by(self, region: str, start: float, end: float, **match: str) -> float:
        """The share of the window's served requests that ``region`` served."""
        served = [o for o in self.window(start, end, **match) if o.ok]
        return sum(1 for o in served if o.region == region) / len(served) if served else 0.0

    def kinds(self, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.window(start, end):
            out[o.kind] = out.get(o.kind, 0) + 1
        return dict(sorted(out.items()))

    def per_second(self, end: float) -> list[dict[str, float | None]]:
        """Per second: offered and served RPS, TTFT p50/p95/p99 and the whole answer's p95, failures."""
        rows: list[dict[str, float | None]] = []
        for s in range(int(end) + 1):
            got = self.window(s, s + 1)
            h = histogram(o.ttft_s for o in got if o.ok and o.ttft_s is not None)
            total = histogram(o.total_s for o in got if o.ok and o.total_s is not None)
            rows.append(
                {
                    "t": float(s),
                    "total_p95": quantile(total, 95),
                    "offered": float(len(got)),
                    "served": float(sum(1 for o in got if o.ok)),
                    "failed": float(sum(1 for o in got if not o.ok and o.kind not in CLEAR)),
                    "refused": float(sum(1 for o in got if o.kind in CLEAR)),
                    "p50": quantile(h, 50),
                    "p95": quantile(h, 95),
                    "p99": quantile(h, 99),
                }
            )
        return rows

    def by_kind(self, end: float) -> dict[str, list[float]]:
        """Per second, the count of each way a request did not succeed ("shed", "cut", "http 500" ...)."""
        kinds = sorted({o.kind for o in self.outcomes if not o.ok})
        out = {k: [0.0] * (int(end) + 1) for k in kinds}
        for o in self.outcomes:
            if not o.ok and 0 <= o.at < int(end) + 1:
                out[o.kind][int(o.at)] += 1
        return out

    def served_per_tenant(self, end: float) -> dict[str, list[float]]:
        """Per second, each tenant's served requests."""
        out: dict[str, list[float]] = {}
        for o in self.outcomes:
            if o.ok and 0 <= o.at < int(end) + 1:
                out.setdefault(o.tenant, [0.0] * (int(end) + 1))[int(o.at)] += 1
        return dict(sorted(out.items()))
