"""Each region's service time — time to first token where the region is, with no network in it — and its
slow baseline (pure, no I/O; takes now).

Two sources: the engines' own TTFT histogram (vLLM's ``vllm:time_to_first_token_seconds``, scraped by the
prober) and, when no engine reports, the edges' time to first token minus each edge's own round trip (the
intake), the median of the edges' fresh views (one edge — a forged stream in its name — moves it no further
than the others' figures reach while two others report; a sample is clamped to 0..MOST_MS). The engine
wins while it is fresh. The value is a plain EWMA (a worse sample moves it by its share,
not to itself); the baseline drops at once to a better value and rises only slowly, so a brown-out shows as
the value standing well above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median
from typing import Literal

Source = Literal["engine", "edges"]

EWMA_ALPHA = 0.3
BASELINE_ALPHA = 0.002  # per sample: a lasting change moves the baseline over minutes
ENGINE_FRESH_S = 10.0  # edges' figures are ignored while the engine reported within this long
STALE_S = 5.0  # no sample for this long: the value drifts back toward the fleet mean
DECAY_PER_S = 0.07  # about a 10 s half-life
EDGE_FRESH_S = 30.0  # an edge's view of a region counts this long after its last sample
MOST_MS = 600_000.0  # a time to first token beyond this is a stuck request, not a service time


@dataclass(slots=True)
class ServiceTracker:
    value: dict[str, float] = field(default_factory=dict)  # region -> service ms (EWMA)
    baseline: dict[str, float] = field(default_factory=dict)
    source: dict[str, Source] = field(default_factory=dict)
    updated: dict[str, float] = field(default_factory=dict)
    engine_at: dict[str, float] = field(default_factory=dict)
    views: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # region -> edge -> ms, at

    def engine(self, region: str, ms: float, *, now: float) -> None:
        """The region's engines reported this mean TTFT over the last scrape interval."""
        self.engine_at[region] = now
        self._fold(region, ms, "engine", now)

    def edges(self, region: str, ms: float, *, now: float, edge: str = "-") -> None:
        """An edge's mean of (time to first token - its round trip) for the region; folded as the median of
        the edges' fresh views; ignored while the engine's own figure is fresh."""
        views = self.views.setdefault(region, {})
        views[edge] = (min(MOST_MS, max(0.0, ms)), now)  # NaN: max(0.0, nan) is 0.0
        if now - self.engine_at.get(region, -1e18) < ENGINE_FRESH_S:
            return
        self._fold(region, median(v for v, at in views.values() if now - at <= EDGE_FRESH_S), "edges", now)

    def _fold(self, region: str, ms: float, source: Source, now: float) -> None:
        prev = self.value.get(region)
        if prev is None or self.source.get(region) != source:  # a first figure, or another kind of one
            self.value[region] = ms
        else:
            self.value[region] = prev + EWMA_ALPHA * (ms - prev)
        base = self.baseline.get(region)
        self.baseline[region] = ms if base is None or ms < base else base + BASELINE_ALPHA * (ms - base)
        self.source[region] = source
        self.updated[region] = now

    def decay(self, now: float, elapsed_s: float) -> None:
        """A region nobody sends to keeps its last (bad) figure forever unless it drifts back: move stale
        values toward the fleet mean so a recovered region is tried again, gradually."""
        if len(self.value) < 2:
            return
        mean = sum(self.value.values()) / len(self.value)
        step = min(1.0, DECAY_PER_S * elapsed_s)
        for region, value in self.value.items():
            if now - self.updated.get(region, now) > STALE_S:
                self.value[region] = value + step * (mean - value)
