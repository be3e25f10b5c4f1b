"""Tenant spend budgets at the edge (I/O): each budgeted tenant's purse (``fleet.spend.Purse``) reserved on
the Redis primary (``BUDGET_SCRIPT``), requests reserved from it locally before they are sent and settled on
their real cost when they end; settlements paid, and purses in use topped up ahead, every ``FLUSH_S``
and with every call (a request waits for the primary only when a burst outruns its purse); an idle purse
given back. While the primary is unreachable an edge process reserves on its share (1 / live edge
processes) of what the primary last said was left."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from edge.admission.limiter import Limiter
from fleet.keys import KEY_LIVE_EDGES as KEY_EDGES
from fleet.keys import budget_key
from fleet.models import NANO
from fleet.redisconn import raise_if_cancelling
from fleet.spend import BUDGET_SCRIPT, Purse, Window, ttl_ms, window
from fleet.tenants import Tenant

FLUSH_S = 1.0  # ended requests' costs are paid (and idle purses given back) this often
MAX_PURSES = 10_000  # past it, settled purses of periods gone by are forgotten


@dataclass(slots=True)
class Hold:
    """One request's reservation: its purse and how much (nano-USD)."""

    key: str
    reserved: int
    share: bool = False  # on the outage share, not the purse


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The tenant's budget cannot cover the request: until when (unix s), and what is spent and held."""

    until: float
    spent_nusd: int
    held_nusd: int


class Budgets:
    def __init__(
        self,
        limiter: Limiter,
        *,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.clock = clock  # the wall clock: budget periods are UTC days and months
        self.mono = mono
        self.script: Any = limiter.client.register_script(BUDGET_SCRIPT)
        self.purses: dict[str, Purse] = {}
        self._windows: dict[str, Window] = {}  # period -> the current one
        self.ttls: dict[str, int] = {}
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def reserve(self, tenant: Tenant, cost: int) -> Hold | Exhausted:
        """Reserve ``cost`` nano-USD of the tenant's current period: from this process's purse, topped up
        from the primary when it holds too little (one call at a time per purse: the others wait for it)."""
        budget = tenant.budget
        assert budget is not None
        now = self.clock()
        w = self._windows.get(budget.period)
        if w is None or now >= w.ends_at:  # a new day or month (computed once per period, not per request)
            w = self._windows[budget.period] = window(budget.period, now)
        key, nusd = budget_key(tenant.id, w.id), round(budget.usd * NANO)
        purse = self.purses.get(key)
        if purse is None:
            purse = self.purses[key] = Purse(nusd)
            self.ttls[key] = ttl_ms(w, now)
        elif purse.budget != nusd:  # the operator changed it: what is held and owed stays
            purse.rebudget(nusd)
        waited = False
        while not purse.refused(cost, self.mono()):
            if purse.take(cost, self.mono()):
                return Hold(key, cost)
            if self.mono() < self.limiter.outage_until:
                if purse.take_share(cost, self.limiter.edges, self.mono()):
                    return Hold(key, cost, share=True)
                break
            if not waited:  # counted once, however many calls it waits for
                waited = True
                self.limiter.waited("budget")
            pending = self._pending.get(key)
            if pending is not None:  # the call in flight asked for this one too, or the next one will
                purse.waiting += cost
                try:
                    await asyncio.shield(pending)
                finally:
                    purse.waiting -= cost
                continue
            await self._call(key, purse, cost)
        return Exhausted(w.ends_at, purse.spent, purse.held_all)

    def settle(self, hold: Hold, cost: int) -> None:
        """The request ended having cost ``cost``: paid with the next call (at most ``FLUSH_S`` away)."""
        purse = self.purses.get(hold.key)
        if purse is not None:
            purse.settle(hold.reserved, cost, self.mono(), share=hold.share)

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_every(), name="budget-settlements")

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Pay what ended requests cost, top up purses in use and give back idle ones: one call per purse
        with anything to do."""
        if self.mono() < self.limiter.outage_until:
            return
        for key, purse in list(self.purses.items()):
            if key in self._pending:
                continue
            ahead = purse.ahead(self.limiter.edges, self.mono())
            if ahead or purse.due(self.mono()):
                await self._call(key, purse, 0, ahead=ahead)
        if len(self.purses) > MAX_PURSES:
            self.purses = {k: p for k, p in self.purses.items() if p.held or p.unheld or p.outage_in_use}

    async def _call(self, key: str, purse: Purse, cost: int, *, ahead: int = 0) -> int | None:
        """One call to the primary: a top-up for a request of ``cost`` (0: none but ``ahead``, before any
        request lacks it) and what is due; what it granted, None when the primary could not be asked."""
        done = asyncio.get_running_loop().create_future()
        self._pending[key] = done
        want, waiting, need = purse.ask(cost, self.limiter.edges) if cost else (ahead, 0, 0)
        due = purse.settlement(self.mono())
        try:
            granted, spent, held = await self.script(
                keys=[key, KEY_EDGES],
                args=[
                    self.limiter.edge_id,
                    want,
                    purse.budget,
                    due.release,
                    due.paid,
                    self.ttls[key],
                    waiting,
                    need,
                ],
            )
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            self.limiter.outage(exc)
            return None
        finally:
            del self._pending[key]
            done.set_result(None)
        purse.settled(due)
        purse.granted(int(granted), int(spent), int(held), need=need, now=self.mono())
        return int(granted)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(Exception):  # what ended requests cost is paid before leaving
            async with asyncio.timeout(0.5):
                await self.flush()
