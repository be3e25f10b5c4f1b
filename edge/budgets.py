"""Tenant spend budgets at the edge (I/O): each request of a budgeted tenant reserves its maximum cost on the
Redis primary (``fleet.spend.BUDGET_SCRIPT``) before it is sent and settles its real cost when it ends; a
settlement the primary cannot take now rides on the next call. While the primary is unreachable an edge
process spends at most its share (1 / live edge processes) of what the primary last said was left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from edge.limiter import KEY_EDGES, Limiter
from fleet.models import NANO
from fleet.redisconn import raise_if_cancelling
from fleet.spend import BUDGET_SCRIPT, Window, budget_key, ttl_ms, window
from fleet.tenants import Tenant


@dataclass(slots=True)
class Hold:
    """One request's reservation: where it is held and how much (nano-USD)."""

    key: str
    budget_nusd: int
    ttl_ms: int
    reserved: int
    local: bool = False  # taken from the outage share, not the primary


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The tenant's budget cannot cover the request: until when (unix s), and what is spent and held."""

    until: float
    spent_nusd: int
    held_nusd: int


@dataclass(slots=True)
class _Standing:
    """What this edge knows of one tenant period: the primary's last word, settlements not yet taken,
    and what it spent on its own share while the primary was out."""

    budget_nusd: int
    ttl_ms: int
    known_left: int | None = None
    release: int = 0
    paid: int = 0
    local_spent: int = 0


class Budgets:
    def __init__(self, limiter: Limiter, *, clock: Callable[[], float] = time.time) -> None:
        self.limiter = limiter
        self.clock = clock
        self.script: Any = limiter.client.register_script(BUDGET_SCRIPT)
        self.standing: dict[str, _Standing] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def reserve(self, tenant: Tenant, cost_nusd: int) -> Hold | Exhausted:
        """Reserve ``cost_nusd`` of the tenant's current period."""
        assert tenant.budget is not None
        now = self.clock()
        w = window(tenant.budget.period, now)
        key = budget_key(tenant.id, w)
        st = self._standing(key, round(tenant.budget.usd * NANO), w, now)
        if self.limiter.clock() >= self.limiter.outage_until:
            answer = await self._call(key, st, cost_nusd)
            if answer is not None:
                granted, spent, held = answer
                if granted:
                    return Hold(key, st.budget_nusd, st.ttl_ms, cost_nusd)
                return Exhausted(w.ends_at, spent, held)
        return self._local(key, st, w, cost_nusd)

    def settle(self, hold: Hold, cost_nusd: int) -> None:
        """The request ended having cost ``cost_nusd``: its reservation let go, the cost paid (at once, in
        the background; carried on the next call while the primary is out)."""
        st = self.standing.get(hold.key)
        if st is None:
            return
        if hold.local:
            st.local_spent += cost_nusd - hold.reserved
            st.paid += cost_nusd
        else:
            st.release += hold.reserved
            st.paid += cost_nusd
        task = asyncio.create_task(self._call(hold.key, st, 0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _standing(self, key: str, budget: int, w: Window, now: float) -> _Standing:
        st = self.standing.get(key)
        if st is None or st.budget_nusd != budget:
            if len(self.standing) > 10_000:  # periods gone by: their settlements were taken long ago
                self.standing = {k: v for k, v in self.standing.items() if v.release or v.paid}
            st = self.standing[key] = _Standing(budget, ttl_ms(w, now))
        return st

    async def _call(self, key: str, st: _Standing, want: int) -> tuple[int, int, int] | None:
        """One call to the primary carrying this edge's pending settlements; None: it failed."""
        release, paid = st.release, st.paid
        st.release = st.paid = 0
        try:
            granted, spent, held = await self.script(
                keys=[key, KEY_EDGES],
                args=[self.limiter.edge_id, want, st.budget_nusd, release, paid, st.ttl_ms],
            )
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            st.release += release
            st.paid += paid
            self.limiter.outage(exc)
            return None
        st.known_left = st.budget_nusd - int(spent) - int(held)
        st.local_spent = 0
        return int(granted), int(spent), int(held)

    def _local(self, key: str, st: _Standing, w: Window, cost: int) -> Hold | Exhausted:
        """The primary is out: this process's share of what it last said was left (of the whole budget
        when it never said)."""
        left = st.budget_nusd if st.known_left is None else st.known_left
        share = left // max(1, self.limiter.edges)
        if st.local_spent + cost > share:
            return Exhausted(w.ends_at, st.budget_nusd - left + st.local_spent, 0)
        st.local_spent += cost
        return Hold(key, st.budget_nusd, st.ttl_ms, cost, local=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
