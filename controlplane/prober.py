"""Active health probing (I/O): probe every replica on an interval, fold results through health.py, write
replica/region health and utilization into the store when they change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping

import aiohttp

from controlplane.health import Signal, Track, fold_region, observe, worse
from controlplane.intake import PassiveBook
from controlplane.settings import ControlPlaneSettings
from controlplane.store import StateStore, StoreError, StoreUnavailable
from fleet.state import Health, RegionState, Topology

log = logging.getLogger("meridian.prober")

_METRIC = re.compile(r"^vllm:num_requests_(running|waiting)(?:\{[^}]*\})?\s+([0-9.eE+-]+)", re.M)


def parse_load(text: str) -> float:
    """Sum vLLM's running + waiting request gauges from Prometheus text."""
    return sum(float(m.group(2)) for m in _METRIC.finditer(text))


class Prober:
    def __init__(
        self, *, settings: ControlPlaneSettings, topology: Topology, store: StateStore, book: PassiveBook
    ) -> None:
        self.book = book
        self.settings = settings
        self.topology = topology
        self.store = store
        self.tracks: dict[tuple[str, str], Track] = {}
        self.rounds = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.probe_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self.round(session)
                except StoreUnavailable as exc:
                    log.warning("prober: store unavailable: %s", exc)
                except Exception:  # a bug in one round must not stop probing
                    log.exception("prober round failed")
                self.rounds += 1
                delay = max(0.0, self.settings.probe_interval_s - (time.monotonic() - started))
                with contextlib.suppress(TimeoutError):  # interruptible sleep
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def _probe(self, session: aiohttp.ClientSession, url: str) -> tuple[Signal, float | None]:
        try:
            async with session.get(url + self.settings.probe_path) as resp:
                await resp.read()
                if resp.status != 200:
                    return "fail", None
            async with session.get(url + "/metrics") as resp:
                load = parse_load(await resp.text()) if resp.status == 200 else None
            return "ok", load
        except (aiohttp.ClientError, TimeoutError, OSError):
            return "fail", None

    async def round(self, session: aiohttp.ClientSession) -> None:
        jobs = [
            (region, replica, self._probe(session, replica.base_url))
            for region in self.topology.regions
            for replica in region.replicas
        ]
        results = await asyncio.gather(*(j[2] for j in jobs))
        per_region: dict[str, dict[str, Health]] = {}
        load: dict[str, float] = {}
        for (region, replica, _), (signal, replica_load) in zip(jobs, results, strict=True):
            key = (region.name, replica.name)
            track = observe(
                self.tracks.get(key, Track()),
                signal,
                rise=self.settings.probe_rise,
                fall=self.settings.probe_fall,
            )
            self.tracks[key] = track
            per_region.setdefault(region.name, {})[replica.name] = track.health
            if replica_load is not None:
                load[region.name] = load.get(region.name, 0.0) + replica_load
        for region in self.topology.regions:
            replicas = per_region.get(region.name, {})
            serving = sum(1 for h in replicas.values() if h != "down") or 1
            capacity = region.capacity * serving / max(1, len(region.replicas))
            utilization = min(load.get(region.name, 0.0) / capacity, 10.0)
            await self._write(region.name, replicas, utilization)

    async def _write(self, name: str, replicas: Mapping[str, Health], utilization: float) -> None:
        threshold = self.settings.utilization_change

        passive = self.book.health(name, time.monotonic())

        def mutate(s: RegionState) -> RegionState | None:
            # unified health: active probes per replica, folded, and the edges' passive view; the worse wins
            health = worse(fold_region(replicas), passive)
            util_moved = abs(s.utilization - utilization) >= threshold or (
                utilization == 0.0 and s.utilization != 0.0
            )
            if s.replicas == dict(replicas) and s.health == health and not util_moved:
                return None
            if s.health != health:
                log.info("region %s health %s -> %s (replicas %s)", name, s.health, health, dict(replicas))
            return s.model_copy(
                update={
                    "replicas": dict(replicas),
                    "health": health,
                    "utilization": round(utilization if util_moved else s.utilization, 4),
                }
            )

        try:
            await self.store.update(name, mutate)
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            log.warning("prober: cannot write %s: %s", name, exc)
