"""Region switch runs (I/O): a drain asked for with a countdown is walked down by this worker (each step a
write through the store, audited with the run's actor and reason), a switch made at once is recorded as it
lands, and both learn when each edge applied their last change from the edges' reports — the measured
recovery time the console shows. Runs live in the store, so a restarted control plane carries on."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from redis.exceptions import RedisError

from controlplane.store import AuditEntry, StateStore, StoreError
from controlplane.switch import SwitchRun, applied_by, countdown_weight, traffic_stopped
from fleet.keys import KEY_RUNS
from fleet.state import RegionState, Topology

log = logging.getLogger("meridian.runs")

TICK_S = 0.5
KEEP = 50  # runs kept (the newest)
QUIET_S = 3.0  # a region's traffic is at 0 once no edge has reported a request to it for this long
FOLLOW_S = 300.0  # how long after its last change a run keeps looking for edges that have not applied it


class Runs:
    def __init__(self, store: StateStore, topo: Topology) -> None:
        self.store = store
        self.edges = topo.names  # every region has an edge

    async def all(self) -> list[SwitchRun]:
        raw: dict[Any, Any] = await self.store.redis.hgetall(KEY_RUNS)
        runs = [SwitchRun.model_validate_json(v) for v in raw.values()]
        return sorted(runs, key=lambda r: r.asked_at, reverse=True)

    async def save(self, run: SwitchRun) -> None:
        await self.store.redis.hset(KEY_RUNS, run.id, run.model_dump_json())

    async def drain(self, region: str, over_s: float, actor: str, reason: str) -> SwitchRun:
        """A drain walked down over ``over_s`` seconds from the region's dial now."""
        current = await self.store.get(region)
        run = SwitchRun(
            id=uuid.uuid4().hex[:12],
            region=region,
            kind="drain",
            actor=actor,
            reason=reason,
            asked_at=time.time(),
            over_s=over_s,
            from_weight=current.weight,
        )
        await self.save(run)
        await self._trim()
        return run

    async def switched(
        self, before: RegionState, after: RegionState, actor: str, reason: str, asked_at: float
    ) -> None:
        """A write that took a region out at once (dial to 0, or drained), asked for at ``asked_at``."""
        out = (after.weight == 0 and before.weight != 0) or (after.drained and not before.drained)
        if not out:
            return
        now = time.time()
        await self.save(
            SwitchRun(
                id=uuid.uuid4().hex[:12],
                region=after.name,
                kind="switch",
                actor=actor,
                reason=reason,
                asked_at=asked_at,
                from_weight=before.weight,
                version=after.version,
                done_at=now,
            )
        )
        await self._trim()

    async def tick(self) -> None:
        now = time.time()
        for run in await self.all():
            if run.version is None:
                await self._step(run, now)
            elif run.done_at and now - run.done_at < FOLLOW_S and not self._settled(run):
                update: dict[str, Any] = {"applied": applied_by(run, await self._reports())}
                if run.traffic_zero_at is None:
                    seen = await self._requests_to(run.region, run.done_at)
                    update["traffic_zero_at"] = traffic_stopped(run.done_at, seen, now, QUIET_S)
                if any(getattr(run, k) != v for k, v in update.items()):
                    await self.save(run.model_copy(update=update))

    def _settled(self, run: SwitchRun) -> bool:
        return len(run.applied) >= len(self.edges) and run.traffic_zero_at is not None

    async def _requests_to(self, region: str, since: float) -> list[float]:
        """When edges reported requests to ``region`` after ``since`` (their observation batches)."""
        rows = await self.store.observations_since(self.edges, since)
        return [float(r["at"]) for r in rows if r.get("region") == region and float(r.get("requests", 0))]

    async def _step(self, run: SwitchRun, now: float) -> None:
        """One step of a drain's countdown: the dial down to where it stands now; at the end 0, drained."""
        elapsed = now - run.asked_at
        target = countdown_weight(run.from_weight, run.over_s, elapsed)
        done = elapsed >= run.over_s
        audit = AuditEntry(actor=run.actor, reason=run.reason, action=f"drain countdown: weight={target}")

        def lower(s: RegionState) -> RegionState | None:
            if done and not s.drained:
                return s.model_copy(update={"weight": 0, "drained": True})
            return s.model_copy(update={"weight": target}) if target < s.weight else None

        _, after = await self.store.update(run.region, lower, audit=audit)
        if done:
            await self.save(run.model_copy(update={"version": after.version, "done_at": now}))

    async def _reports(self) -> dict[str, tuple[int, float]]:
        reports = await self.store.applied(self.edges)
        return {edge: (r.position[1], r.at) for edge, r in reports.items()}

    async def _trim(self) -> None:
        runs = await self.all()
        if len(runs) > KEEP:
            await self.store.redis.hdel(KEY_RUNS, *(r.id for r in runs[KEEP:]))

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except (StoreError, RedisError, OSError) as exc:
                log.debug("switch runs: store unavailable: %s", exc)
            await asyncio.sleep(TICK_S)
