"""Holding requests for a model whose pools scaled to zero while a first replica starts (I/O: waits on the
snapshot feed, and the wake marks written to the primary). The nearest region with a scale-to-zero pool of
the model that operators have not drained or dialled to zero is woken: this edge keeps its count of the
requests it holds for that pool in the pool's wake hash (``fleet.wake``), which the autoscaler reads to
switch a first replica on. A held request is re-planned on every new snapshot and goes as soon as a
region serves its model; it is bounded in number (``wake_max_held``: beyond, 503 at once; one tenant holds
at most half of it, so another always finds room) and in time (``wake_hold_s``: then 503 with Retry-After).
A held request whose client left is cancelled with its handler and let go at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from edge.telemetry.metrics import EdgeMetrics
from fleet.keys import wake_key
from fleet.pools import PoolKey
from fleet.redisconn import raise_if_cancelling
from fleet.state import Snapshot, Topology
from fleet.wake import WAKE_EVERY_S, WAKE_TTL_S, wake_mark

log = logging.getLogger("meridian.wake")

T = TypeVar("T")


class Waker:
    def __init__(
        self,
        *,
        topology: Topology,
        edge: str,
        hold_s: float,
        max_held: int,
        metrics: EdgeMetrics,
        client: Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hold_s = hold_s
        self.max_held = max_held
        self.metrics = metrics
        self.client = client  # the primary (None: nothing is written, so nothing wakes a pool)
        self.clock = clock
        self.field = f"{edge}/{os.getpid()}"  # this edge process's mark in each wake hash
        self.sleepers: dict[str, list[str]] = {}  # model -> regions with a scale-to-zero pool of it
        for region in topology.regions:
            for pool in region.pools:
                if pool.scale_to_zero:
                    self.sleepers.setdefault(pool.model, []).append(region.name)
        self.held: dict[PoolKey, int] = {}
        self.by_tenant: dict[str, int] = {}
        self._dirty = asyncio.Event()
        self._marker: asyncio.Task[None] | None = None

    def region(self, model: str, snapshot: Snapshot, rtt_ms: Callable[[str], float]) -> str | None:
        """The region to wake for ``model``: the nearest with a scale-to-zero pool of it that is not
        drained or dialled to zero (None: no such region, or the model never scales to zero)."""
        regions = [
            r
            for r in self.sleepers.get(model, ())
            if (st := snapshot.regions.get(r)) is None or (st.weight > 0 and not st.drained)
        ]
        return min(regions, key=rtt_ms, default=None)

    async def hold(
        self,
        pool: PoolKey,
        ready: Callable[[], T | None],
        news: Callable[[], Awaitable[object]],
        tenant: str | None = None,
    ) -> T | None:
        """Hold one request of ``tenant`` for ``pool``'s first replica: ``ready()`` (its plan once a region
        serves the model) is asked now and after every ``news()``; None when the hold (or the tenant's half
        of it; None: authentication is off, every request is one tenant's) is full or its time ran out."""
        mine = self.by_tenant.get(tenant, 0) if tenant is not None else 0
        if sum(self.held.values()) >= self.max_held or (tenant and mine >= max(1, self.max_held // 2)):
            self.metrics.child(self.metrics.wake_outcomes, "full").inc()
            return None
        if tenant is not None:
            self.by_tenant[tenant] = mine + 1
        self._count(pool, +1)
        deadline = self.clock() + self.hold_s
        try:
            while (got := ready()) is None:
                left = deadline - self.clock()
                if left <= 0:
                    self.metrics.child(self.metrics.wake_outcomes, "timeout").inc()
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news(), timeout=left)
            self.metrics.child(self.metrics.wake_outcomes, "served").inc()
            return got
        finally:
            self._count(pool, -1)
            if tenant is not None:
                if left := self.by_tenant[tenant] - 1:
                    self.by_tenant[tenant] = left
                else:
                    del self.by_tenant[tenant]

    def _count(self, pool: PoolKey, delta: int) -> None:
        held = self.held[pool] = self.held.get(pool, 0) + delta
        self.metrics.child(self.metrics.wake_held, pool[0]).set(
            sum(n for k, n in self.held.items() if k[0] == pool[0])
        )
        if held in (0, 1) and self.client is not None:  # a pool's first held request, or its last gone
            self._dirty.set()
            if self._marker is None or self._marker.done():
                self._marker = asyncio.create_task(self._mark(), name="wake-marks")

    async def _mark(self) -> None:
        """Write this edge's marks at once when a pool gets its first held request (or loses its last),
        and every ``WAKE_EVERY_S`` while any is held; clear them when none is."""
        while True:
            self._dirty.clear()
            await self._write()
            if not any(self.held.values()):
                self.held = {}
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=WAKE_EVERY_S)

    async def _write(self) -> None:
        assert self.client is not None
        now = time.time()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for (region, model), n in self.held.items():
                    if model is None:  # the open world has no pools to wake
                        continue
                    key = wake_key(region, model)
                    if n > 0:
                        pipe.hset(key, self.field, wake_mark(n, now))
                        pipe.pexpire(key, int(WAKE_TTL_S * 1000))
                    else:
                        pipe.hdel(key, self.field)
                await pipe.execute()
        except (RedisError, OSError) as exc:  # the next round writes again; the mark's age tells the truth
            raise_if_cancelling(exc)
            log.warning("wake marks not written: %s", exc)

    async def close(self) -> None:
        if self._marker is not None:
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
