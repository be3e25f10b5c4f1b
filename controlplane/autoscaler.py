"""The autoscaler (I/O): every ``autoscaling.interval_s``, each pool's load from the engine signals the prober
scraped (smoothed), the load drained or down regions hand to the others, one decision per pool
(``controlplane.scaling``), the cost ceilings, then actuation through a backend — the simulator (switch
replica slots on and off, spot or on demand, with their cold start) or none (Kubernetes: KEDA reads the
desired replicas from the admin API and the HPA acts). Decisions go to the store's pools hash (what
``GET /v1/pools`` answers), to the audit log when a pool's replica count changes, and to Prometheus.

A pool's replicas are the region's replica slots serving its model, in regions.yaml's order (at most
``max_replicas`` of them on); a slot the
backend switched off is down to the prober, so edges route around it (and a slot switched on ramps up
through the edges' slow start). A spot interruption switches its slot off at once (what it runs finishes,
nothing new goes to it) and marks the slot's spot capacity gone for a while, so its replacement is on
demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.backends import Backend, Kind
from controlplane.scaling import PoolMemory, ScaleDecision, absorbed, commit, decide, mix, within_ceilings
from controlplane.store import AuditEntry, StateStore, StoreError
from fleet.keys import KEY_POOLS, wake_key
from fleet.pools import PoolKey, PoolSpec
from fleet.signals import EngineSignals
from fleet.state import Topology
from fleet.wake import woken

log = logging.getLogger("meridian.autoscaler")

SPOT_GONE_S = 600.0  # after an interruption, that slot's spot capacity is taken as gone this long
NOTICE_S = 110.0  # a spot machine goes two minutes after its notice: an interrupted slot is off before that
DRAIN_S = 0.25  # a slot is marked down this long before its machine goes (edges take a change in < 30 ms)


class NotServing(Exception):
    """An interruption notice for a slot that is off."""


class OnDemand(Exception):
    """An interruption notice for an on-demand machine, not forced."""


@dataclass
class Pool:
    """One pool as the autoscaler runs it: its slots and which are on (with their kind)."""

    region: str
    spec: PoolSpec
    slots: dict[str, str]  # replica -> base URL, in regions.yaml's order
    on: dict[str, Kind] = field(default_factory=dict)
    spot_gone: dict[str, float] = field(default_factory=dict)  # slot -> until when its spot capacity is gone
    leaving: set[str] = field(default_factory=set)  # interrupted, serving until their replacement does
    ready_at: dict[str, float] = field(default_factory=dict)  # slot -> when its cold start is over
    down_since: dict[str, float] = field(default_factory=dict)  # slot on and down to the probes, since
    memory: PoolMemory = field(default_factory=lambda: PoolMemory(0))
    load: float | None = None  # smoothed
    absorbed: float = 0.0  # load taken on for drained or down regions, in the last decision
    last: ScaleDecision | None = None

    @property
    def key(self) -> PoolKey:
        return PoolKey(self.region, self.spec.model)

    def spot_available(self, now: float) -> int:
        """Slots that can run spot now: on as spot already, or off with spot capacity not gone."""
        return sum(
            1
            for s in self.slots
            if self.on.get(s) == "spot" or (s not in self.on and self.spot_gone.get(s, 0.0) <= now)
        )


class Autoscaler:
    def __init__(
        self,
        *,
        topology: Topology,
        store: StateStore,
        signals: Callable[[], Mapping[tuple[str, str], EngineSignals]],
        backend: Backend,
        registry: CollectorRegistry,
        hold_down: Callable[[str, str, bool], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        spot_notices: bool = True,
    ) -> None:
        self.hold_down = hold_down  # the prober's: a drained slot is down in the store at once
        self.spot_notices = spot_notices  # off: a machine's notice is not acted on (it goes when it goes)
        self.topology = topology
        self.policy = topology.autoscaling
        self.store = store
        self.signals = signals
        self.backend = backend
        self.clock = clock
        served = topology.catalog
        self.pools: dict[PoolKey, Pool] = {}
        for region in topology.regions:
            for spec in region.pools:
                slots = {
                    rep.name: rep.base_url
                    for rep in region.replicas
                    if served.serves(region.name, rep.name, spec.model)
                }
                pool = Pool(region.name, spec, slots)
                self.pools[pool.key] = pool
        self._metrics(registry)
        self._stop = asyncio.Event()
        self._interrupting = asyncio.Lock()  # notices one at a time: each sees what the last one left
        self._leaving: set[asyncio.Task[None]] = set()

    def _metrics(self, r: CollectorRegistry) -> None:
        labels = ["region", "model"]
        self.m_current = Gauge(
            "meridian_pool_replicas",
            "Replicas switched on, by capacity type",
            [*labels, "capacity"],
            registry=r,
        )
        self.m_desired = Gauge(
            "meridian_pool_desired_replicas", "What the last decision asked for", labels, registry=r
        )
        self.m_cost = Gauge(
            "meridian_pool_cost_per_hour", "$ per hour of the replicas on", labels, registry=r
        )
        self.m_decisions = Counter(
            "meridian_pool_scaling_decisions",
            "Decisions that changed replicas, by why",
            [*labels, "reason"],
            registry=r,
        )
        self.m_ceiling = Gauge(
            "meridian_pool_cost_ceiling_binding",
            "1 while a cost ceiling holds the pool below its load's need",
            labels,
            registry=r,
        )
        self.m_panic = Gauge("meridian_pool_panic", "1 inside a panic window", labels, registry=r)

    async def start(self) -> None:
        """Take over the slots: the pool starts at its slots that are on (a slot the backend cannot tell
        about counts as on) within its bounds; every slot's switch set accordingly. The first decision's
        window remembers this count, so a restart does not scale down at once."""
        now = self.clock()
        for pool in self.pools.values():
            powered = await asyncio.gather(*(self.backend.powered(url) for url in pool.slots.values()))
            on = sum(1 for p in powered if p is not False)
            count = min(max(on, pool.spec.min_replicas), pool.spec.max_replicas)
            pool.memory = PoolMemory(0, recommendations=((now, count),))
            await self._apply(pool, *mix(pool.spec, count), now)
            for slot in [s for s in pool.slots if s not in pool.on]:  # beyond max_replicas: off
                await self._switch(pool, slot, on=False, kind="on_demand")
            pool.memory = PoolMemory(count, recommendations=((now, count),))
            await self._publish(pool, None, now)

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await self.backend.close()

    async def run(self) -> None:
        await self.start()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.policy.interval_s)
            if self._stop.is_set():
                return
            try:
                await self.step()
            except Exception:  # one bad round must not end the autoscaler
                log.exception("autoscaler round failed")

    async def step(self) -> dict[PoolKey, ScaleDecision]:
        """One round: load, decisions, ceilings, actuation, records."""
        now = self.clock()
        if self.spot_notices:
            await self._notices(now)
        routable, health = await self._regions()
        await self._replace_failed(health, now)
        self._sample(routable)
        extra = self._absorbed(routable)
        held = await self._held()
        decisions = {}
        for k, p in self.pools.items():
            p.absorbed = extra.get(k, 0.0)
            decisions[k] = decide(
                p.spec,
                self.policy,
                p.memory,
                load=p.load or 0.0,
                absorbed=p.absorbed,
                held=held.get(k, 0),
                now=now,
            )
        decisions = within_ceilings(
            decisions,
            {k: p.spec for k, p in self.pools.items()},
            region_ceilings={r.name: r.cost_ceiling_hour for r in self.topology.regions},
            global_ceiling=self.policy.cost_ceiling_hour,
        )
        for key, d in decisions.items():
            pool = self.pools[key]
            pool.memory = commit(d, self.policy, now)
            pool.last = d
            on_demand, spot = mix(pool.spec, d.desired, pool.spot_available(now))
            await self._apply(pool, on_demand, spot, now)
            await self._record(pool, d, now)
        return decisions

    async def _notices(self, now: float) -> None:
        """Poll every spot machine that is on for an interruption notice (the cloud's two-minute warning)
        and act on each at once: drain, replace."""
        spot = [
            (p, slot)
            for p in self.pools.values()
            for slot, kind in p.on.items()
            if kind == "spot" and slot not in p.leaving  # one notice each
        ]

        async def ask(pool: Pool, slot: str) -> str | None:
            try:
                return await self.backend.notice(pool.slots[slot])
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.debug("no notice read from %s/%s: %s", pool.region, slot, exc)
                return None

        notices = await asyncio.gather(*(ask(p, s) for p, s in spot))
        for (pool, slot), notice in zip(spot, notices, strict=True):
            if notice is not None and pool.on.get(slot) == "spot":
                await self.interrupt(pool.region, slot, reason=f"spot notice: {notice}", now=now)

    def _sample(self, routable: Mapping[str, bool]) -> None:
        """Each pool's load from the fresh signals of its slots that are on (EWMA). A region that is drained
        or down has handed its traffic to the others: its load only decays (what they absorb of it fades as
        their own signals take it over)."""
        signals, alpha = self.signals(), self.policy.smoothing
        stale = self.clock() - 3 * self.policy.interval_s
        for pool in self.pools.values():
            if not routable.get(pool.region, True):
                pool.load = None if pool.load is None else (1 - alpha) * pool.load
                continue
            got = [signals.get((pool.region, s)) for s in pool.on]
            fresh = [g for g in got if g is not None and g.at >= stale]
            if not fresh and pool.on:
                continue  # nothing known: the last load stands
            if pool.spec.target.metric == "concurrency":
                now_load = sum(g.running + g.waiting for g in fresh)
            else:
                now_load = sum(g.kv_usage or 0.0 for g in fresh)
            pool.load = now_load if pool.load is None else alpha * now_load + (1 - alpha) * pool.load

    async def _regions(self) -> tuple[dict[str, bool], dict[str, Mapping[str, str]]]:
        """Each region's routability and its replicas' health, from the store ({} when it is out: nobody
        hands load over, nothing is replaced this round)."""
        try:
            _, regions, _ = await self.store.all()
        except Exception:
            return {}, {}
        return {n: st.routable for n, st in regions.items()}, {n: st.replicas for n, st in regions.items()}

    async def _replace_failed(self, health: Mapping[str, Mapping[str, str]], now: float) -> None:
        """A machine that is on, past its cold start, and down to the probes for ``replace_down_after_s``
        has failed: it is given back and replaced, as a managed instance group replaces an unhealthy VM."""
        after = self.policy.replace_down_after_s
        for pool in self.pools.values():
            replicas = health.get(pool.region, {})
            for slot in [s for s in pool.on if s not in pool.leaving]:
                if replicas.get(slot) != "down" or pool.ready_at.get(slot, 0.0) > now:
                    pool.down_since.pop(slot, None)
                    continue
                since = pool.down_since.setdefault(slot, now)
                if now - since < after:
                    continue
                pool.down_since.pop(slot, None)
                reason = f"{slot} down to the probes for {now - since:.0f} s: replaced"
                with contextlib.suppress(KeyError, NotServing):
                    await self.interrupt(pool.region, slot, reason=reason, force=True, now=now)

    def _absorbed(self, routable: Mapping[str, bool]) -> dict[PoolKey, float]:
        """Per model, the load of pools in regions that are not routable, handed to the routable ones."""
        out: dict[PoolKey, float] = {}
        models = {p.spec.model for p in self.pools.values()}
        for model in models:
            pools = {p.region: p for p in self.pools.values() if p.spec.model == model}
            loads = {r: p.load or 0.0 for r, p in pools.items()}
            for region, more in absorbed(loads, {r: routable.get(r, True) for r in pools}).items():
                out[PoolKey(region, model)] = more
        return out

    async def _held(self) -> dict[PoolKey, int]:
        """Requests the edges hold for each pool that may scale to zero (their wake marks)."""
        asleep = [p for p in self.pools.values() if p.spec.scale_to_zero]
        if not asleep:
            return {}
        try:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for p in asleep:
                    pipe.hgetall(wake_key(p.region, p.spec.model))
                marks = await pipe.execute()
        except Exception as exc:  # the store is out: nothing is known to wait
            log.debug("wake marks not read: %s", exc)
            return {}
        now = time.time()
        return {p.key: woken(m, now) for p, m in zip(asleep, marks, strict=True)}

    async def _apply(self, pool: Pool, on_demand: int, spot: int, now: float) -> None:
        """Switch slots so that ``on_demand`` and ``spot`` of them are on: surplus of a kind off (newest
        first), missing ones on from the slots that are off (spot only where spot capacity is not gone)."""
        want: dict[Kind, int] = {"on_demand": on_demand, "spot": spot}
        kinds: tuple[Kind, Kind] = ("spot", "on_demand")
        for kind in kinds:
            mine = [s for s, k in pool.on.items() if k == kind and s not in pool.leaving]
            for slot in reversed(mine[want[kind] :]):
                await self._switch(pool, slot, on=False, kind=kind)
        for kind in reversed(kinds):
            have = sum(1 for s, k in pool.on.items() if k == kind and s not in pool.leaving)
            free = [
                s
                for s in pool.slots
                if s not in pool.on
                and s not in pool.leaving
                and (kind == "on_demand" or pool.spot_gone.get(s, 0.0) <= now)
            ]
            for slot in free[: max(0, want[kind] - have)]:
                await self._switch(pool, slot, on=True, kind=kind)

    async def _switch(self, pool: Pool, slot: str, *, on: bool, kind: Kind) -> None:
        """On: the machine starts, and the probes bring the slot up once it serves. Off: drained first —
        down in the store, so edges send it nothing new — then its machine goes; what it runs finishes."""
        try:
            if not on:
                await self.hold_down(pool.region, slot, True)
                await asyncio.sleep(DRAIN_S)
            await self.backend.switch(pool.slots[slot], on=on, kind=kind, cold_start_s=pool.spec.cold_start_s)
            if on:
                await self.hold_down(pool.region, slot, False)
        except (aiohttp.ClientError, OSError, TimeoutError, StoreError) as exc:
            log.warning("could not switch %s/%s %s: %s", pool.region, slot, "on" if on else "off", exc)
            return
        if on:
            pool.on[slot] = kind
            pool.ready_at[slot] = self.clock() + pool.spec.cold_start_s
        else:
            pool.on.pop(slot, None)

    async def interrupt(
        self,
        region: str,
        replica: str,
        *,
        actor: str = "meridian-autoscaler",
        reason: str = "",
        force: bool = False,
        now: float | None = None,
    ) -> Pool:
        """A spot interruption notice (or any notice to give a machine back; an on-demand one only when
        ``force``d): its replacement goes on now (on demand when spot is short), and the slot is switched
        off — it finishes what it runs, takes nothing new — at once, or, when the pool would serve fewer than
        ``min_replicas`` without it, once the replacement's cold start is over (within the notice's two
        minutes). Notices are taken one at a time."""
        async with self._interrupting:
            now = self.clock() if now is None else now
            pool = next((p for p in self.pools.values() if p.region == region and replica in p.slots), None)
            if pool is None:
                raise KeyError(replica)
            kind = pool.on.get(replica)
            if kind is None:
                raise NotServing(replica)
            if replica in pool.leaving:  # noticed already: it goes once its replacement serves
                return pool
            if kind == "on_demand" and not force:
                raise OnDemand(replica)
            del pool.on[replica]  # not counted from now: its replacement goes on first
            serving = sum(1 for r in pool.on if r not in pool.leaving and pool.ready_at.get(r, 0.0) <= now)
            pool.leaving.add(replica)  # never picked as its own replacement
            if kind == "spot":
                pool.spot_gone[replica] = now + SPOT_GONE_S
            on_demand, spot = mix(pool.spec, pool.memory.current, pool.spot_available(now))
            was = set(pool.on)
            await self._apply(pool, on_demand, spot, now)
            started = [pool.ready_at.get(r, now) for r in pool.on if r not in was]
            wait = 0.0
            if serving < pool.spec.min_replicas:  # it serves until its replacement does
                ready = max(started) if started else now + pool.spec.cold_start_s
                wait = min(max(0.0, ready - self.clock()), NOTICE_S)
            pool.on[replica] = kind  # still serving until it is switched off, never counted again
            task = asyncio.create_task(self._let_go(pool, replica, kind, wait))
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)
            if not wait:
                await asyncio.shield(task)
            await self.store.append_audit(
                AuditEntry(
                    actor,
                    (reason or f"interruption notice for {replica}")
                    + (f" (off in {wait:.1f} s, once its replacement serves)" if wait else ""),
                    f"interrupt {kind} {replica}",
                ),
                region=f"pool:{region}/{pool.spec.model}",
            )
            await self._publish(pool, pool.last, now)
            return pool

    async def _let_go(self, pool: Pool, replica: str, kind: Kind, after: float) -> None:
        try:
            if after:
                await asyncio.sleep(after)
            await self._switch(pool, replica, on=False, kind=kind)
        finally:
            pool.leaving.discard(replica)

    async def _record(self, pool: Pool, d: ScaleDecision, now: float) -> None:
        labels = (pool.region, pool.spec.model)
        self.m_desired.labels(*labels).set(d.desired)
        self.m_ceiling.labels(*labels).set(1 if d.capped else 0)
        self.m_panic.labels(*labels).set(1 if d.panic else 0)
        if d.desired != d.previous:
            why = (
                "panic"
                if d.panic
                else "cost ceiling"
                if d.capped
                else "up"
                if d.desired > d.previous
                else "down"
            )
            self.m_decisions.labels(*labels, why).inc()
            await self.store.append_audit(
                AuditEntry("meridian-autoscaler", d.reason, f"scale {d.previous} -> {d.desired}"),
                region=f"pool:{pool.region}/{pool.spec.model}",
            )
        await self._publish(pool, d, now)

    def status(self, pool: Pool, now: float) -> dict[str, Any]:
        on_demand = sum(1 for k in pool.on.values() if k == "on_demand")
        spot = len(pool.on) - on_demand
        d = pool.last
        return {
            "region": pool.region,
            "model": pool.spec.model,
            "current": len(pool.on),
            "desired": d.desired if d is not None else pool.memory.current,
            "min": pool.spec.min_replicas,
            "max": pool.spec.max_replicas,
            "on_demand": on_demand,
            "spot": spot,
            "cost_per_hour": round(pool.spec.cost_hour(on_demand, spot), 4),
            "load": None if pool.load is None else round(pool.load, 2),
            "absorbed": round(pool.absorbed, 2),
            "target": pool.spec.target.model_dump(),
            "reason": d.reason if d is not None else "starting",
            "panic": bool(d and d.panic),
            "cost_capped": bool(d and d.capped),
            "replicas": dict(pool.on),
            "at": now,
        }

    async def _publish(self, pool: Pool, d: ScaleDecision | None, now: float) -> None:
        status = self.status(pool, now)
        for kind in ("on_demand", "spot"):
            self.m_current.labels(pool.region, pool.spec.model, kind).set(status[kind])
        self.m_cost.labels(pool.region, pool.spec.model).set(status["cost_per_hour"])
        try:
            await self.store.redis.hset(KEY_POOLS, f"{pool.region}/{pool.spec.model}", json.dumps(status))
        except Exception as exc:  # the store is out: the next round writes again
            log.debug("pool status not written: %s", exc)
