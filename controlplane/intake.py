"""Observation intake (I/O): fold the edges' batched observations into each region's latency in the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from controlplane.settings import ControlPlaneSettings
from controlplane.state import RegionState
from controlplane.store import StateStore, StoreError

log = logging.getLogger("meridian.intake")

EWMA_ALPHA = 0.3


class Intake:
    def __init__(self, *, settings: ControlPlaneSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self.ttft: dict[str, float] = {}
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
            for row in rows:
                self.batches += 1
                try:
                    region = row["region"]
                    ttfb = float(row["ttfb_ms"])
                except (KeyError, ValueError):
                    continue
                prev = self.ttft.get(region)
                self.ttft[region] = ttfb if prev is None else prev + EWMA_ALPHA * (ttfb - prev)
            for region, value in list(self.ttft.items()):
                await self._maybe_write(region, value)

    async def _maybe_write(self, region: str, value: float) -> None:
        change = self.settings.latency_change

        def mutate(s: RegionState) -> RegionState | None:
            if s.latency_ms is not None and abs(value - s.latency_ms) <= change * s.latency_ms:
                return None
            return s.model_copy(update={"latency_ms": round(value, 2)})

        try:
            await self.store.update(region, mutate)
        except StoreError as exc:
            log.debug("intake: cannot write %s: %s", region, exc)
        except Exception as exc:
            log.debug("intake: %s", exc)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
