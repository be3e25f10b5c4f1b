"""Active health probing (I/O): probe every replica on an interval, fold results through health.py, write
replica/region health and utilization into the store when they change; read each engine's load gauges and
its time-to-first-token histogram from its Prometheus metrics (the region's service time, measured where the
region is)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from controlplane.health import Signal, Track, fold_region, observe, worse
from controlplane.intake import PassiveBook
from controlplane.service import ServiceTracker
from controlplane.settings import ControlPlaneSettings
from controlplane.store import StateStore, StoreError, StoreUnavailable
from fleet.state import Health, RegionState, Topology

log = logging.getLogger("meridian.prober")

LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """What the prober reads from one engine's /metrics: requests running + waiting, and its TTFT
    histogram's running sum (seconds) and count."""

    load: float
    ttft_sum_s: float
    ttft_count: float


def parse_engine_metrics(text: str) -> EngineMetrics:
    """vLLM's load gauges and TTFT histogram from Prometheus text (prometheus_client's parser)."""
    load = ttft_sum = ttft_count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name in LOAD_GAUGES:
            load += sum(s.value for s in family.samples)
        elif family.name == TTFT_HISTOGRAM:
            for s in family.samples:
                if s.name == TTFT_HISTOGRAM + "_sum":
                    ttft_sum += s.value
                elif s.name == TTFT_HISTOGRAM + "_count":
                    ttft_count += s.value
    return EngineMetrics(load, ttft_sum, ttft_count)


class Prober:
    def __init__(
        self,
        *,
        settings: ControlPlaneSettings,
        topology: Topology,
        store: StateStore,
        book: PassiveBook,
        service: ServiceTracker,
    ) -> None:
        self.book = book
        self.service = service
        self.ttft_seen: dict[tuple[str, str], tuple[float, float]] = {}  # replica -> last (sum, count)
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

    async def _probe(self, session: aiohttp.ClientSession, url: str) -> tuple[Signal, EngineMetrics | None]:
        try:
            async with session.get(url + self.settings.probe_path) as resp:
                await resp.read()
                if resp.status != 200:
                    return "fail", None
            async with session.get(url + "/metrics") as resp:
                metrics = parse_engine_metrics(await resp.text()) if resp.status == 200 else None
            return "ok", metrics
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
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
        ttft: dict[str, tuple[float, float]] = {}  # region -> (seconds, first tokens) since the last round
        for (region, replica, _), (signal, metrics) in zip(jobs, results, strict=True):
            key = (region.name, replica.name)
            track = observe(
                self.tracks.get(key, Track()),
                signal,
                rise=self.settings.probe_rise,
                fall=self.settings.probe_fall,
            )
            self.tracks[key] = track
            per_region.setdefault(region.name, {})[replica.name] = track.health
            if metrics is not None:
                load[region.name] = load.get(region.name, 0.0) + metrics.load
                d_sum, d_count = self._ttft_delta(key, metrics)
                t = ttft.get(region.name, (0.0, 0.0))
                ttft[region.name] = (t[0] + d_sum, t[1] + d_count)
        now = time.monotonic()
        for name, (seconds, count) in ttft.items():
            if count > 0:
                self.service.engine(name, seconds / count * 1000.0, now=now)
        for region in self.topology.regions:
            replicas = per_region.get(region.name, {})
            serving = sum(1 for h in replicas.values() if h != "down") or 1
            capacity = region.capacity * serving / max(1, len(region.replicas))
            utilization = min(load.get(region.name, 0.0) / capacity, 10.0)
            await self._write(region.name, replicas, utilization)

    def _ttft_delta(self, key: tuple[str, str], m: EngineMetrics) -> tuple[float, float]:
        """The replica's TTFT seconds and first tokens since its last scrape (nothing on the first scrape or
        after the engine restarted and its counters went back)."""
        prev = self.ttft_seen.get(key)
        self.ttft_seen[key] = (m.ttft_sum_s, m.ttft_count)
        if prev is None or m.ttft_count < prev[1] or m.ttft_sum_s < prev[0]:
            return 0.0, 0.0
        return m.ttft_sum_s - prev[0], m.ttft_count - prev[1]

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
