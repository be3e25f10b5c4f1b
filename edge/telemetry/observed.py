"""What this edge has seen itself (in-memory, no I/O): per-replica outstanding requests, its own round trip
to each region (an EWMA of its probes), and per-region counters and service-time samples (time to first
token minus this edge's round trip) drained into observation batches."""

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
    origins: dict[str, int] = field(default_factory=dict)  # client continent -> requests committed here
    service_sum_ms: float = 0.0  # time to first token minus this edge's round trip, summed since the drain
    service_n: int = 0


@dataclass(slots=True)
class Observed:
    alpha: float = 0.3  # RTT EWMA weight of a new probe
    # region -> replica -> requests in flight (looked up per request: no scan over every replica)
    outstanding: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(_per_replica))
    region_inflight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counters: dict[str, RegionCounters] = field(default_factory=dict)
    rtt: dict[str, float] = field(default_factory=dict)  # region -> this edge's round trip (EWMA, ms)
    rtt_default: dict[str, float] = field(default_factory=dict)  # region -> estimate from distance
    rtt_version: int = 0  # bumped by every probe round

    def start(self, region: str, replica: str) -> None:
        self.outstanding[region][replica] += 1
        self.region_inflight[region] += 1

    def finish(self, region: str, replica: str) -> None:
        self.outstanding[region][replica] -= 1
        self.region_inflight[region] -= 1

    def outstanding_in(self, region: str) -> Mapping[str, int]:
        """Requests in flight per replica of ``region`` (a live view: read it, do not keep it)."""
        return self.outstanding[region]

    def _counters(self, region: str) -> RegionCounters:
        c = self.counters.get(region)
        if c is None:
            c = self.counters[region] = RegionCounters()
        return c

    def record(self, region: str, *, error: bool) -> None:
        """One attempt's outcome in ``region``."""
        c = self._counters(region)
        c.requests += 1
        if error:
            c.errors += 1

    def served(self, region: str, continent: str | None) -> None:
        """A request from a client on ``continent`` was answered from ``region`` (the console's flows)."""
        c = self._counters(region)
        key = continent or "unknown"
        c.origins[key] = c.origins.get(key, 0) + 1

    def first_token(self, region: str, ttft_ms: float) -> None:
        """A stream's first event arrived ``ttft_ms`` after the attempt left: the region's service time is
        that minus this edge's own round trip to it (what every edge reports alike)."""
        c = self._counters(region)
        c.service_sum_ms += max(0.0, ttft_ms - self.rtt_ms(region))
        c.service_n += 1

    def rtt_ms(self, region: str) -> float:
        hit = self.rtt.get(region)
        return hit if hit is not None else self.rtt_default.get(region, 0.0)

    def probed(self, samples: Mapping[str, float]) -> None:
        """One probe round: region -> round trip (ms) for the regions that answered."""
        for region, ms in samples.items():
            prev = self.rtt.get(region)
            self.rtt[region] = ms if prev is None else prev + self.alpha * (ms - prev)
        self.rtt_version += 1

    def drain(self) -> dict[str, dict[str, float]]:
        """Counters since the last drain, for one observation batch."""
        out: dict[str, dict[str, float]] = {}
        for region, c in self.counters.items():
            if c.requests == 0 and c.service_n == 0:
                continue
            row = {
                "requests": float(c.requests),
                "errors": float(c.errors),
                "inflight": float(self.region_inflight.get(region, 0)),
            }
            if c.service_n:
                row["service_ms"] = c.service_sum_ms / c.service_n
                row["service_samples"] = float(c.service_n)
            if region in self.rtt:
                row["rtt_ms"] = self.rtt[region]
            row.update({f"from:{k}": float(n) for k, n in c.origins.items()})
            out[region] = row
            c.origins = {}
            c.requests = c.errors = c.service_n = 0
            c.service_sum_ms = 0.0
        return out
