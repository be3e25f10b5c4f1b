"""Holding requests while their pool is saturated (I/O: asyncio futures and one timer task). A pool is one
region's replicas of one model. While every one of them is saturated by its engine signals, this edge keeps
its requests in flight to the pool at what they were when it saw the saturation (at least one), and the rest
wait in a ``FairQueue`` (priority bands, fair between tenants, bounded in size and wait): each request that
ends lets the next one go, and when the signals show room again everything held goes. The replica is
chosen when a request leaves the queue. Without saturation nothing waits: a dict lookup and a counter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge.fairqueue import BANDS, BandLimits, FairQueue
from edge.metrics import EdgeMetrics
from fleet.tenants import Priority

PoolKey = tuple[str, str | None]  # (region, model)
Shed = Literal["full", "timeout"]
TICK_S = 0.05  # how often held requests are checked for their wait limit and for room in their pool


@dataclass(slots=True)
class _Pool:
    queue: FairQueue[asyncio.Future[Shed | None]]
    inflight: int = 0  # this edge's requests in flight to the pool
    cap: int | None = None  # while saturated: the most this edge keeps in flight there


@dataclass
class Gate:
    saturated: Callable[[str, str | None], bool]  # (region, model) -> every replica is saturated
    metrics: EdgeMetrics
    bands: Mapping[Priority, BandLimits]
    clock: Callable[[], float] = time.monotonic
    pools: dict[PoolKey, _Pool] = field(default_factory=dict)
    _ticker: asyncio.Task[None] | None = None

    def try_pass(self, key: PoolKey) -> bool:
        """Go now (counted in flight) unless the pool is saturated and this edge already has its share
        there, or others are already waiting."""
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = _Pool(FairQueue(self.bands))
        if pool.queue:
            return False
        if not self.saturated(*key):
            pool.cap = None
        elif pool.cap is None:
            pool.cap = max(1, pool.inflight)
            self.metrics.child(self.metrics.saturated_pools, key[0]).inc()
        if pool.cap is not None and pool.inflight >= pool.cap:
            return False
        pool.inflight += 1
        return True

    async def wait(self, key: PoolKey, *, tenant: str, band: Priority, cost: int) -> Shed | None:
        """Wait for a turn in the pool (None: go, counted in flight) or be shed."""
        pool = self.pools[key]
        fut: asyncio.Future[Shed | None] = asyncio.get_running_loop().create_future()
        waiter = pool.queue.push(fut, tenant=tenant, band=band, cost=cost, now=self.clock())
        if waiter is None:
            self._shed(band, "full")
            return "full"
        self._depths()
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="saturation-gate")
        try:
            verdict = await fut
        except asyncio.CancelledError:  # the client left while it waited
            if not pool.queue.remove(waiter) and fut.done() and not fut.cancelled() and fut.result() is None:
                self.leave(key)  # it had been let in
            self._depths()
            raise
        self.metrics.child(self.metrics.queue_wait, band).observe(self.clock() - waiter.since)
        return verdict

    def leave(self, key: PoolKey) -> None:
        """A request that went to the pool ended: the next held one may go."""
        pool = self.pools[key]
        pool.inflight -= 1
        if pool.queue:
            self._release(key, pool)

    def _release(self, key: PoolKey, pool: _Pool) -> None:
        if not self.saturated(*key):
            pool.cap = None
        while pool.queue and (pool.cap is None or pool.inflight < pool.cap):
            waiter = pool.queue.pop()
            if waiter is None:
                break
            if not waiter.item.done():
                pool.inflight += 1
                waiter.item.set_result(None)
        self._depths()

    async def _tick(self) -> None:
        """While anything is held: refuse what waited past its band's limit, let go what has room."""
        while any(p.queue for p in self.pools.values()):
            await asyncio.sleep(TICK_S)
            now = self.clock()
            for key, pool in self.pools.items():
                if not pool.queue:
                    continue
                for waiter in pool.queue.expired(now):
                    if not waiter.item.done():
                        waiter.item.set_result("timeout")
                        self._shed(waiter.band, "timeout")
                self._release(key, pool)

    def _shed(self, band: Priority, why: Shed) -> None:
        self.metrics.child(self.metrics.shed, band, why).inc()

    def _depths(self) -> None:
        for band in BANDS:
            depth = sum(p.queue.depth(band) for p in self.pools.values())
            self.metrics.child(self.metrics.queue_depth, band).set(depth)

    def held(self) -> dict[str, int]:
        """Requests held now, per band."""
        return {b: sum(p.queue.depth(b) for p in self.pools.values()) for b in BANDS}

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
