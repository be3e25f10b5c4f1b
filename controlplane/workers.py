"""The control plane's background work (I/O), started and stopped with the admin API: its store clients,
seeding the regions, the keeper that puts the store back from the copy, the observation intake, the prober
and the autoscaler."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from litestar.datastructures import State
from redis.asyncio import Redis

from controlplane.autoscaler import Autoscaler
from controlplane.backends import Backend, NoBackend, SimulatorBackend
from controlplane.intake import Intake, PassiveBook
from controlplane.prober import Prober
from controlplane.runs import Runs
from controlplane.service import ServiceTracker
from controlplane.settings import ControlPlaneSettings
from controlplane.store import StateStore, StoreError, is_unavailable
from controlplane.tenants import TenantStore
from fleet.redisconn import connect, raise_if_cancelling, redact
from fleet.state import Topology
from fleet.tasks import stop_tasks

log = logging.getLogger("meridian.api")


def store_of(state: State) -> StateStore:
    store: StateStore = state.store
    return store


def open_store(settings: ControlPlaneSettings, topo: Topology, state: State) -> Redis:
    """The store's client, the state store and tenant store over it, in the app's state."""
    password, secret = settings.redis_password, settings.key_secret
    client = connect(
        settings.redis_url,
        username=settings.redis_username,
        password=None if password is None else password.get_secret_value(),
    )
    state.store = store = StateStore(client, topology=topo, metrics=state.store_metrics)
    key = None if secret is None else secret.get_secret_value().encode()
    state.tenants = TenantStore(client, secret=key, state=store)
    state.seeded = asyncio.Event()
    log.info(
        "control plane (pid %d) admin API on http://%s:%d; %d regions from %s; state store %s",
        os.getpid(),
        settings.host,
        settings.port,
        len(topo.regions),
        settings.regions_file,
        redact(settings.redis_url),
    )
    return client


@dataclass
class Workers:
    """The background tasks of one control plane and the parts they run."""

    prober: Prober
    intake: Intake
    autoscaler: Autoscaler | None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    runs: Runs | None = None

    @classmethod
    def start(cls, settings: ControlPlaneSettings, topo: Topology, state: State) -> Workers:
        store = store_of(state)
        book = PassiveBook(rise=settings.probe_rise, fall=settings.probe_fall)
        service = ServiceTracker()
        state.prober = prober = Prober(
            settings=settings, topology=topo, store=store, book=book, service=service
        )
        state.intake = intake = Intake(settings=settings, store=store, book=book, service=service)
        intake.names = frozenset(topo.names)
        w = cls(prober, intake, _autoscaler(settings, topo, store, prober, state))
        state.runs = w.runs = Runs(store, topo)
        w.tasks.append(asyncio.create_task(_seed_until_done(settings, state), name="seed"))
        w.tasks.append(asyncio.create_task(w._after_seed(settings, state), name="workers"))
        w.tasks.append(asyncio.create_task(_keep(store, state), name="keeper"))
        return w

    async def _after_seed(self, settings: ControlPlaneSettings, state: State) -> None:
        await state.seeded.wait()
        workers = [self.intake.run()]
        if self.runs is not None:
            workers.append(self.runs.run())
        if self.autoscaler is not None:
            workers.append(self.autoscaler.run())
        if settings.probe_enabled:
            workers.append(self.prober.run())
        await asyncio.gather(*workers)

    async def stop(self) -> None:
        self.prober.stop()
        self.intake.stop()
        if self.autoscaler is not None:
            self.autoscaler.stop()
            await self.autoscaler.close()
        await stop_tasks(self.tasks, SHUTDOWN_TASKS_S)  # bounded: shutting down always finishes


async def _seed_until_done(settings: ControlPlaneSettings, state: State) -> None:
    delay, said = 0.2, ""
    while True:
        try:
            changed = await store_of(state).seed(state.topology, now=time.time())
            if changed:
                log.info("seeded regions into the store: %s", changed)
            if said:
                log.info("state store reachable again; regions seeded")
            state.seeded.set()
            return
        except Exception as exc:
            raise_if_cancelling(exc)
            if str(exc) != said:  # once, then on change: a store down for an hour is not 700 lines
                log.warning(
                    "cannot reach the state store at %s to seed regions (%s); retrying every %.0f s at most",
                    redact(settings.redis_url),
                    exc,
                    5.0,
                )
                said = str(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


KEEP_INTERVAL_S = 0.5
SHUTDOWN_TASKS_S = 5.0


async def _keep(store: StateStore, state: State) -> None:
    """Hold the copy of the store's state and put it back when the store comes back empty or old."""
    await state.seeded.wait()
    while True:
        try:
            if await store.check() == "restore":
                log.warning("state store restored from the control plane's copy (restore %d)", store.restores)
        except Exception as exc:
            raise_if_cancelling(exc)  # redis-py may turn our cancellation into a connection error
            if isinstance(exc, StoreError) or is_unavailable(exc):
                log.debug("keeper: %s", exc)  # the API's 503s and the prober say so
            else:
                log.exception("keeper round failed")
        await asyncio.sleep(KEEP_INTERVAL_S)


def _autoscaler(
    settings: ControlPlaneSettings, topo: Topology, store: StateStore, prober: Prober, state: State
) -> Autoscaler | None:
    """The autoscaler of regions.yaml's pools, with the backend the settings name (None: off or no pools)."""
    if settings.autoscaler == "off" or not any(r.pools for r in topo.regions):
        return None
    backend: Backend = NoBackend()
    if settings.autoscaler == "simulator":
        backend = SimulatorBackend()
    autoscaler = Autoscaler(
        topology=topo,
        store=store,
        signals=lambda: prober.latest,
        backend=backend,
        registry=state.registry,
        hold_down=prober.hold_down,
        spot_notices=settings.spot_notices,
    )
    state.autoscaler = autoscaler
    return autoscaler
