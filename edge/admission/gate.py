"""Holding requests while their pool is saturated (I/O: asyncio futures and one timer task). A pool is one
region's replicas of one model. Once every one of them is saturated by its engine signals, this edge keeps
its requests in flight to the pool under a ceiling (``next_cap``: its share of what keeps the engines just
under the threshold, revised on every fresh scrape) and the rest wait in a ``FairQueue`` (priority bands,
fair between tenants, bounded in size and wait): each request that ends lets the next one go. When the
signals show room again the ceiling grows step by step, and goes once nothing is held. The replica is
chosen when a request leaves the queue. Without saturation nothing waits: a lookup and a counter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge.admission.fairqueue import BANDS, BandLimits, FairQueue, next_cap
from edge.routing.replicas import PoolLoad
from edge.telemetry.metrics import EdgeMetrics
from fleet.pools import PoolKey
from fleet.tenants import Priority

Shed = Literal["full", "timeout"]
TICK_S = 0.05  # how often held requests are checked for their wait limit and for room in their pool


@dataclass(slots=True)
class _Pool:
    queue: FairQueue[asyncio.Future[Shed | None]]
    inflight: int = 0  # this edge's requests in flight to the pool
    cap: int | None = None  # while saturated (and until what was held has gone): this edge's ceiling there
    seen: object = None  # the signals the ceiling was last revised on


@dataclass
class Gate:
    load: Callable[[str, str | None], PoolLoad | None]  # (region, model) -> its engines, fresh signals only
    signals: Callable[[], object]  # the current signals (a new object on every poll)
    metrics: EdgeMetrics
    bands: Mapping[Priority, BandLimits]
    max_waiting: float = 5.0
    clock: Callable[[], float] = time.monotonic
    pools: dict[PoolKey, _Pool] = field(default_factory=dict)
    _ticker: asyncio.Task[None] | None = None

    def try_pass(self, key: PoolKey) -> bool:
        """Go now (counted in flight) unless the pool has a ceiling this edge is at, or others wait."""
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = _Pool(FairQueue(self.bands))
        if pool.queue:
            return False
        if pool.cap is None:
            load = self.load(*key)
            if load is None or not load.saturated:
                pool.inflight += 1
                return True
            pool.cap = next_cap(None, pool.inflight, load, max_waiting=self.max_waiting, held=False)
            pool.seen = self.signals()
            self.metrics.child(self.metrics.saturated_pools, key[0]).inc()
            self._tick_on()
        if pool.cap is not None and pool.inflight >= pool.cap:
            return False
        pool.inflight += 1
        return True

    async def wait(self, key: PoolKey, *, tenant: str, band: Priority, cost: int) -> Shed | None:
        """Wait for a turn in the pool (None: go, counted in flight) or be shed."""
        pool = self.pools[key]
        fut: asyncio.Future[Shed | None] = asyncio.get_running_loop().create_future()
        waiter, dropped = pool.queue.push(fut, tenant=tenant, band=band, cost=cost, now=self.clock())
        if dropped is not None and not dropped.item.done():  # a flooding tenant's newest made room
            dropped.item.set_result("full")
            self._shed(band, "full")
        if waiter is None:
            self._shed(band, "full")
            return "full"
        self._depths()
        self._tick_on()
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
            self._release(pool)

    def _release(self, pool: _Pool) -> None:
        while pool.queue and (pool.cap is None or pool.inflight < pool.cap):
            waiter = pool.queue.pop()
            if waiter is None:
                break
            if not waiter.item.done():
                pool.inflight += 1
                waiter.item.set_result(None)
        self._depths()

    def _tick_on(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="saturation-gate")

    async def _tick(self) -> None:
        """While any pool has a ceiling: refuse what waited past its band's limit, revise the ceiling on
        fresh signals, let go what fits under it."""
        while any(p.cap is not None for p in self.pools.values()):
            await asyncio.sleep(TICK_S)
            now, signals = self.clock(), self.signals()
            for key, pool in self.pools.items():
                if pool.cap is None:
                    continue
                for waiter in pool.queue.expired(now):
                    if not waiter.item.done():
                        waiter.item.set_result("timeout")
                        self._shed(waiter.band, "timeout")
                if signals is not pool.seen:
                    pool.seen = signals
                    load = self.load(*key)
                    held = bool(pool.queue)
                    pool.cap = next_cap(
                        pool.cap, pool.inflight, load, max_waiting=self.max_waiting, held=held
                    )
                self._release(pool)

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
