"""What this edge has seen itself (in-memory, no I/O): per-replica outstanding requests and per-region
time-to-first-byte (peak-sensitive EWMA), plus counters drained into observation batches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field


def _per_replica() -> defaultdict[str, int]:
    return defaultdict(int)


@dataclass(slots=True)
class RegionCounters:
    requests: int = 0
    errors: int = 0
    ttfb_ewma_ms: float | None = None


@dataclass(slots=True)
class Observed:
    alpha: float = 0.2
    # region -> replica -> requests in flight (looked up per request: no scan over every replica)
    outstanding: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(_per_replica))
    region_inflight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counters: dict[str, RegionCounters] = field(default_factory=dict)

    def start(self, region: str, replica: str) -> None:
        self.outstanding[region][replica] += 1
        self.region_inflight[region] += 1

    def finish(self, region: str, replica: str) -> None:
        self.outstanding[region][replica] -= 1
        self.region_inflight[region] -= 1

    def outstanding_in(self, region: str) -> Mapping[str, int]:
        """Requests in flight per replica of ``region`` (a live view: read it, do not keep it)."""
        return self.outstanding[region]

    def record(self, region: str, *, ttfb_ms: float | None, error: bool) -> None:
        c = self.counters.setdefault(region, RegionCounters())
        c.requests += 1
        if error:
            c.errors += 1
        if ttfb_ms is not None:
            prev = c.ttfb_ewma_ms
            # peak-sensitive: jump to worse values at once, decay slowly toward better ones
            c.ttfb_ewma_ms = (
                ttfb_ms if prev is None or ttfb_ms > prev else prev + self.alpha * (ttfb_ms - prev)
            )

    def drain(self) -> dict[str, dict[str, float]]:
        """Counters since the last drain, for one observation batch (EWMA carries over)."""
        out: dict[str, dict[str, float]] = {}
        for region, c in self.counters.items():
            if c.requests == 0:
                continue
            row = {
                "requests": float(c.requests),
                "errors": float(c.errors),
                "inflight": float(self.region_inflight.get(region, 0)),
            }
            if c.ttfb_ewma_ms is not None:
                row["ttfb_ms"] = c.ttfb_ewma_ms
            out[region] = row
            c.requests = 0
            c.errors = 0
        return out
