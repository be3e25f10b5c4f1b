"""Active health probing and engine scraping (I/O). Every ``probe_interval_s``: probe every replica, fold
results through health.py, write replica/region health and utilization into the store when they change.
Every ``signals_interval_s``: scrape every replica's Prometheus metrics once for the whole fleet (edges never
scrape), publish each replica's engine signals (queue, KV cache, adapters) through the replicated store, and
keep its time-to-first-token histogram (the region's service time, measured where the region is)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from controlplane.engines import parse_metrics
from controlplane.health import Signal, Track, fold_region, observe, worse
from controlplane.intake import PassiveBook
from controlplane.service import ServiceTracker
from controlplane.settings import ControlPlaneSettings
from controlplane.store import StateStore, StoreError, StoreUnavailable, is_unavailable
from fleet.episode import Episode
from fleet.signals import EngineSignals, signal_key
from fleet.state import Health, Region, RegionState, Replica, Topology

log = logging.getLogger("meridian.prober")

STORE_REMIND_S = 60.0  # a store that cannot take the prober's writes is logged again this often


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
        self.held_down: set[tuple[str, str]] = set()  # replicas the autoscaler drains or switched off
        self.starting: set[tuple[str, str]] = set()  # switched on, not up yet
        self.rounds = 0
        self.write_trouble: dict[str, str] = {}  # region -> why its last write failed (logged once)
        self.scrapes = 0
        self.latest: dict[tuple[str, str], EngineSignals] = {}  # replica -> its last good scrape
        self.seeded = False  # the tracks start from the store's view (taken once, before the first round)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.probe_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                self._every(self.settings.probe_interval_s, lambda: self.round(session), "prober"),
                self._every(self.settings.signals_interval_s, lambda: self.scrape(session), "scraper"),
            )

    async def _every(self, interval: float, work: Callable[[], Awaitable[None]], what: str) -> None:
        """``work`` every ``interval``; a store that cannot take its writes logged when that begins, every
        ``STORE_REMIND_S`` while it lasts and when it ends, not every round."""
        store = Episode(STORE_REMIND_S)  # the store unavailable
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await work()
                if (lasted := store.ended(started)) is not None:
                    log.warning("%s: store available again after %.0f s", what, lasted)
            except Exception as exc:  # a bug in one round must not stop probing
                if not is_unavailable(exc):
                    log.exception("%s round failed", what)
                elif store.failed(started) is not None:
                    log.warning("%s: store unavailable: %s", what, exc)
            delay = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):  # interruptible sleep
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def _probe(self, session: aiohttp.ClientSession, region: Region, replica: Replica) -> Signal:
        """One health probe: ``probe_path`` (vLLM, SGLang, TGI: /health); a plain OpenAI-compatible server
        (``engine: openai``) has none, so ``GET /v1/models``, where every model it serves must be listed."""
        url = replica.base_url
        openai = region.engine_of(replica) == "openai"
        try:
            async with session.get(url + ("/v1/models" if openai else self.settings.probe_path)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return "fail"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return "fail"
        if not openai:
            return "ok"
        try:
            listed = {m.get("id") for m in json.loads(body).get("data", []) if isinstance(m, dict)}
        except (ValueError, AttributeError):
            return "fail"
        wanted = self.topology.catalog.served.get((region.name, replica.name), frozenset())
        return "ok" if wanted <= listed else "fail"

    async def _metrics(self, session: aiohttp.ClientSession, url: str) -> EngineSignals | None:
        try:
            async with session.get(url + "/metrics") as resp:
                if resp.status != 200:
                    return None
                return parse_metrics(await resp.text(), at=time.time())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        """One scrape of every replica's engine; the signals go to the store in one write."""
        replicas = [  # a plain OpenAI-compatible server (engine: openai) has no engine metrics to scrape
            (r.name, rep) for r in self.topology.regions for rep in r.replicas if r.engine_of(rep) != "openai"
        ]
        results = await asyncio.gather(*(self._metrics(session, rep.base_url) for _, rep in replicas))
        fresh: dict[str, str] = {}
        for (region, rep), signals in zip(replicas, results, strict=True):
            if signals is not None:
                self.latest[(region, rep.name)] = signals
                fresh[signal_key(region, rep.name)] = signals.model_dump_json()
        self.scrapes += 1
        if fresh:
            await self.store.publish_signals(fresh)

    async def seed(self) -> None:
        """Start each replica's track from the store's view of it, not from "up": a control plane that
        restarts must not call up, for the two probes it takes to see otherwise, a replica the store has
        down — switched off by the autoscaler, drained, or failed — or edges send it requests it refuses
        (found by the fault campaign, seed 2)."""
        try:
            _, regions, _ = await self.store.all()
        except StoreError:
            return  # the next round tries again
        for name, st in regions.items():
            for replica, health in st.replicas.items():
                self.tracks.setdefault((name, replica), Track(health=health))
        self.seeded = True

    async def round(self, session: aiohttp.ClientSession) -> None:
        if not self.seeded:
            await self.seed()
        jobs = [(region, replica) for region in self.topology.regions for replica in region.replicas]
        results = await asyncio.gather(*(self._probe(session, region, rep) for region, rep in jobs))
        self.rounds += 1  # probes taken (what tests wait on)
        per_region: dict[str, dict[str, Health]] = {}
        load: dict[str, float] = {}
        kv: dict[str, list[float]] = {}
        ttft: dict[str, tuple[float, float]] = {}  # region -> (seconds, first tokens) since the last round
        stale_before = time.time() - 3 * self.settings.signals_interval_s
        for (region, replica), signal in zip(jobs, results, strict=True):
            key = (region.name, replica.name)
            track = observe(
                self.tracks.get(key, Track()),
                signal,
                rise=self.settings.probe_rise,
                fall=self.settings.probe_fall,
            )
            self.tracks[key] = track
            if track.health == "up":
                self.starting.discard(key)
            held = key in self.held_down
            per_region.setdefault(region.name, {})[replica.name] = "down" if held else track.health
            metrics = self.latest.get(key)
            if signal == "ok" and metrics is not None and metrics.at >= stale_before:
                load[region.name] = load.get(region.name, 0.0) + metrics.running + metrics.waiting
                if metrics.kv_usage is not None:
                    kv.setdefault(region.name, []).append(metrics.kv_usage)
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
            queueing = load.get(region.name, 0.0) / capacity
            caches = kv.get(region.name)
            kv_mean = sum(caches) / len(caches) if caches else 0.0  # a full KV cache queues as surely
            await self._write(region.name, replicas, min(max(queueing, kv_mean), 10.0))

    async def hold_down(self, region: str, replica: str, down: bool) -> None:
        """The autoscaler drains a replica (down: written at once, so edges stop sending it new requests
        before its machine goes) or gives it back to the probes (which bring it up after ``probe_rise``)."""
        key = (region, replica)
        if not down:
            if key in self.held_down:  # back to the probes, from down: up only after ``probe_rise`` good ones
                self.tracks[key] = Track(health="down")
                self.held_down.discard(key)
                self.starting.add(key)  # not a failure while it starts: the region's health leaves it out
            return
        self.held_down.add(key)
        self.starting.discard(key)  # switched off before it came up: no longer capacity that is coming

        def mutate(s: RegionState) -> RegionState | None:
            if s.replicas.get(replica) == "down":
                return None
            replicas = {**s.replicas, replica: "down"}
            health = worse(fold_region(replicas, self._off(region)), None)
            return s.model_copy(update={"replicas": replicas, "health": health})

        await self.store.update(region, mutate)

    def _off(self, region: str) -> set[str]:
        """``region``'s replicas the autoscaler drained, switched off or is starting."""
        return {replica for r, replica in self.held_down | self.starting if r == region}

    def _ttft_delta(self, key: tuple[str, str], m: EngineSignals) -> tuple[float, float]:
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
            health = worse(fold_region(replicas, self._off(name)), passive)
            util_moved = abs(s.utilization - utilization) >= threshold or (
                utilization == 0.0 and s.utilization != 0.0
            )
            starting = sum(1 for r, _ in self.starting if r == name)
            if (
                s.replicas == dict(replicas)
                and s.health == health
                and not util_moved
                and s.starting == starting
            ):
                return None
            if s.health != health:
                log.info("region %s health %s -> %s (replicas %s)", name, s.health, health, dict(replicas))
            return s.model_copy(
                update={
                    "replicas": dict(replicas),
                    "health": health,
                    "utilization": round(utilization if util_moved else s.utilization, 4),
                    "starting": starting,
                }
            )

        try:
            await self.store.update(name, mutate)
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            if str(exc) != self.write_trouble.get(name):  # once per new reason, not every round
                log.warning("prober: cannot write %s: %s", name, exc)
            self.write_trouble[name] = str(exc)
        else:
            self.write_trouble.pop(name, None)
