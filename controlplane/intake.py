"""Observation intake (I/O): fold the edges' batched observations — errors into passive health, service
times into the shared ``ServiceTracker`` — and write each region's service time and baseline to the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

from controlplane.health import SEVERITY, Track, observe, passive_signal
from controlplane.service import ServiceTracker
from controlplane.settings import ControlPlaneSettings
from controlplane.store import StateStore, StoreError
from fleet.state import Health, RegionState

log = logging.getLogger("meridian.intake")


@dataclass
class PassiveBook:
    """Edge-reported (passive) health: each edge's view of each region, with hysteresis; a region's
    passive health is what a majority of the edges with a fresh view see (one edge — or one forged
    stream entry in an edge's name — cannot take a region down that the other edges serve). Read by the
    prober when it writes."""

    rise: int
    fall: int
    stale_s: float = 10.0
    tracks: dict[tuple[str, str], Track] = field(default_factory=dict)  # (edge, region) ->
    seen_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def feed(self, region: str, *, requests: float, errors: float, now: float, edge: str = "-") -> None:
        signal = passive_signal(requests=requests, errors=errors)
        if signal is None:
            return
        key = (edge, region)
        self.tracks[key] = observe(self.tracks.get(key, Track()), signal, rise=self.rise, fall=self.fall)
        self.seen_at[key] = now

    def health(self, region: str, now: float) -> Health | None:
        views: list[Health] = []
        for key in [k for k in self.tracks if k[1] == region]:
            if now - self.seen_at.get(key, -1e18) > self.stale_s:
                del self.tracks[key]
            else:
                views.append(self.tracks[key].health)
        if not views:
            return None
        # the worst health that more than half of the views are at least as bad as
        return max(
            (h for h in SEVERITY if sum(SEVERITY[v] >= SEVERITY[h] for v in views) * 2 > len(views)),
            key=SEVERITY.__getitem__,
        )


class Intake:
    def __init__(
        self, *, settings: ControlPlaneSettings, store: StateStore, book: PassiveBook, service: ServiceTracker
    ) -> None:
        self.settings = settings
        self.store = store
        self.book = book
        self.service = service
        self.batches = 0
        self.rejected = 0  # rows dropped: unknown edge or region, impossible counts
        self.names: frozenset[str] = frozenset()  # the topology's regions: its edges, whose streams are read
        self._decayed_at = time.monotonic()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        cursors: dict[str, str] | None = None
        while not self._stop.is_set():
            try:
                if cursors is None:
                    cursors = await self.store.observation_cursors(sorted(self.names))
                cursors, rows = await self.store.read_observations(cursors, block_ms=500)
            except (StoreError, OSError, ConnectionError) as exc:
                log.debug("intake: store unavailable: %s", exc)
                await _sleep_or_stop(self._stop, 1.0)
                continue
            except Exception as exc:  # redis-py raises its own ConnectionError subclasses
                log.debug("intake: %s", exc)
                await _sleep_or_stop(self._stop, 1.0)
                continue
            now = time.monotonic()
            for row in rows:
                self.batches += 1
                self._fold(row, now)
            self.service.decay(now, now - self._decayed_at)
            self._decayed_at = now
            for region, value in list(self.service.value.items()):
                await self._maybe_write(region, value)

    def _fold(self, row: dict[str, str], now: float) -> None:
        """One edge's row for one region (its edge: the stream it came from): errors into passive health
        (as that edge's view), service time into the tracker. A row naming a region the topology lacks, or
        with counts that are not finite and non-negative, is dropped and counted (forged, or a bug)."""
        try:
            region, edge = row["region"], row["edge"]
            requests, errors = float(row["requests"]), float(row["errors"])
            if (
                region not in self.names
                or not (math.isfinite(requests) and math.isfinite(errors))
                or not 0 <= errors <= requests
            ):
                self.rejected += 1
                return
            self.book.feed(region, requests=requests, errors=errors, now=now, edge=edge)
            if "service_ms" in row:
                self.service.edges(region, float(row["service_ms"]), now=now, edge=edge)
        except (KeyError, ValueError):
            log.debug("intake: malformed observation row %s", row)

    async def _maybe_write(self, region: str, value: float) -> None:
        change = self.settings.latency_change
        baseline = self.service.baseline.get(region)
        source = self.service.source.get(region)

        def mutate(s: RegionState) -> RegionState | None:
            moved = s.latency_ms is None or abs(value - s.latency_ms) > change * s.latency_ms
            base_moved = baseline is not None and (
                s.baseline_ms is None or abs(baseline - s.baseline_ms) > change * s.baseline_ms
            )
            if not moved and not base_moved and s.latency_source == source:
                return None
            return s.model_copy(
                update={
                    "latency_ms": round(value, 2) if moved else s.latency_ms,
                    "latency_source": source,
                    "baseline_ms": round(baseline, 2)
                    if baseline is not None and base_moved
                    else s.baseline_ms,
                }
            )

        try:
            await self.store.update(region, mutate)
        except StoreError as exc:
            log.debug("intake: cannot write %s: %s", region, exc)
        except Exception as exc:
            log.debug("intake: %s", exc)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
