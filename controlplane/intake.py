"""Observation intake (I/O): fold the edges' batched observations into each region's latency in the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from controlplane.health import Track, observe, passive_signal
from controlplane.settings import ControlPlaneSettings
from controlplane.store import StateStore, StoreError
from fleet.state import Health, RegionState

log = logging.getLogger("meridian.intake")

EWMA_ALPHA = 0.3
BASELINE_ALPHA = 0.002  # per observation row: a lasting change moves the baseline over minutes
STALE_S = 5.0  # no observation for this long: the region's latency drifts back toward the fleet mean
DECAY_PER_S = 0.07  # about a 10 s half-life


@dataclass
class PassiveBook:
    """Edge-reported (passive) health per region, with hysteresis; read by the prober when it writes."""

    rise: int
    fall: int
    stale_s: float = 10.0
    tracks: dict[str, Track] = field(default_factory=dict)
    seen_at: dict[str, float] = field(default_factory=dict)

    def feed(self, region: str, *, requests: float, errors: float, now: float) -> None:
        signal = passive_signal(requests=requests, errors=errors)
        if signal is None:
            return
        self.tracks[region] = observe(
            self.tracks.get(region, Track()), signal, rise=self.rise, fall=self.fall
        )
        self.seen_at[region] = now

    def health(self, region: str, now: float) -> Health | None:
        if now - self.seen_at.get(region, -1e18) > self.stale_s:
            self.tracks.pop(region, None)
            return None
        t = self.tracks.get(region)
        return None if t is None else t.health


class Intake:
    def __init__(self, *, settings: ControlPlaneSettings, store: StateStore, book: PassiveBook) -> None:
        self.settings = settings
        self.store = store
        self.book = book
        self.ttft: dict[str, float] = {}
        self.baseline: dict[str, float] = {}
        self.updated: dict[str, float] = {}
        self.batches = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        last_id = "$"
        while not self._stop.is_set():
            try:
                last_id, rows = await self.store.read_observations(last_id, block_ms=500)
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
                try:
                    region = row["region"]
                    self.book.feed(
                        region, requests=float(row["requests"]), errors=float(row["errors"]), now=now
                    )
                    ttfb = float(row["ttfb_ms"])
                except (KeyError, ValueError):
                    continue
                prev = self.ttft.get(region)
                self.ttft[region] = ttfb if prev is None else prev + EWMA_ALPHA * (ttfb - prev)
                base = self.baseline.get(region)
                # the baseline drops at once to a better value and rises only slowly
                self.baseline[region] = (
                    ttfb if base is None or ttfb < base else base + BASELINE_ALPHA * (ttfb - base)
                )
                self.updated[region] = now
            self._decay(now)
            for region, value in list(self.ttft.items()):
                await self._maybe_write(region, value)

    def _decay(self, now: float) -> None:
        """A region nobody sends to keeps its last (bad) latency forever unless it drifts back: move stale
        values toward the fleet mean so a recovered region is tried again, gradually."""
        if len(self.ttft) < 2:
            return
        mean = sum(self.ttft.values()) / len(self.ttft)
        for region, value in self.ttft.items():
            idle = now - self.updated.get(region, now)
            if idle > STALE_S:
                self.ttft[region] = value + min(1.0, DECAY_PER_S * 0.5) * (mean - value)

    async def _maybe_write(self, region: str, value: float) -> None:
        change = self.settings.latency_change

        baseline = self.baseline.get(region)

        def mutate(s: RegionState) -> RegionState | None:
            moved = s.latency_ms is None or abs(value - s.latency_ms) > change * s.latency_ms
            base_moved = baseline is not None and (
                s.baseline_ms is None or abs(baseline - s.baseline_ms) > change * s.baseline_ms
            )
            if not moved and not base_moved:
                return None
            return s.model_copy(
                update={
                    "latency_ms": round(value, 2) if moved else s.latency_ms,
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
