"""Tenant limits at the edge (I/O): the leases of ``edge.admission.limits`` taken from the Redis primary, in
the background while a lease lasts, on the request path only when this edge holds too little for the request;
debts carried back; the local share while the primary is unreachable or refuses (told apart in logs and
metrics), sized by the edge processes registered live; the rate-limit headers OpenAI's clients read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from multidict import istr
from redis.exceptions import RedisError, ResponseError

from edge.admission.limits import (
    EDGES_SCRIPT,
    LEASE_SCRIPT,
    OUTAGE_RETRY_S,
    SLOTS_SCRIPT,
    SLOTS_TTL_S,
    Bucket,
    Slots,
)
from fleet.episode import Episode
from fleet.keys import KEY_LIVE_EDGES, limit_key
from fleet.redisconn import raise_if_cancelling, refusal
from fleet.tenants import Limits, Tenant

log = logging.getLogger("meridian.limits")

REGISTER_S = 1.0  # an edge process renews its registration this often (it lapses after 3 missed)
OUTAGE_REMIND_S = 60.0  # a failing primary is logged when it begins, then this often while it lasts
DIMENSIONS = (("requests", "rpm"), ("tokens", "tpm"))
HEADERS_TTL_S = 0.1  # an admitted answer's rate-limit headers are at most this old
# OpenAI's rate-limit header names, as multidict's case-insensitive strings made once (a plain str is
# case-folded again by every response that carries it)
HEADER_NAMES = {
    name: tuple(istr(f"x-ratelimit-{kind}-{name}") for kind in ("limit", "remaining", "reset"))
    for name, _ in (("requests", "rpm"), ("tokens", "tpm"))
}


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's init costs 3x)
class Verdict:
    admitted: bool
    headers: dict[str, str]
    retry_after_s: float = 0.0
    refused: str | None = None  # "requests" or "tokens"


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request's concurrent slot: the holding it came from, and whether it is the local share's."""

    tenant: str
    slots: Slots
    local: bool


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    m, s = divmod(math.ceil(seconds), 60)
    return f"{m}m{s}s" if m else f"{s}s"


class Limiter:
    def __init__(
        self,
        *,
        client: aioredis.Redis,
        edges: int,
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.edges = max(1, edges)  # edge processes sharing the limits: the registry's count once read
        self.on_failure = on_failure  # told "refused" or "unreachable" for each failed call to the primary
        # told "lease", "slots" or "budget" for each request that waits for a call to the primary
        self.on_wait = on_wait
        self.clock = clock
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.backlog: dict[tuple[str, str], tuple[float, float]] = {}  # -> (Redis's TAT - now, when) s
        self.outage_until = 0.0
        self.episode = Episode(OUTAGE_REMIND_S)  # a failing primary, logged when it begins and ends
        self.script: Any = client.register_script(LEASE_SCRIPT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._verdicts: dict[str, tuple[Verdict, float, Limits]] = {}
        self.slots: dict[str, Slots] = {}
        self.slots_script: Any = client.register_script(SLOTS_SCRIPT)
        self.edges_script: Any = client.register_script(EDGES_SCRIPT)
        self.edge_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renewer: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[None]] = {}  # leases being asked for

    def _charges(self, tenant: Tenant, tokens: int) -> list[tuple[str, Bucket, float]]:
        """What one request costs in each of the tenant's limited dimensions, and the bucket it comes from."""
        out: list[tuple[str, Bucket, float]] = []
        for name, field in DIMENSIONS:
            limit = getattr(tenant.limits, field)
            if limit is not None:
                out.append((name, self._bucket(tenant, name, limit), 1 if name == "requests" else tokens))
        return out

    def admit_held(self, tenant: Tenant, tokens: int) -> Verdict | None:
        """The common case, without a suspension: every limited dimension holds leased permits for this
        request, which are spent (None: one does not, nothing is spent — ``admit`` leases or refuses)."""
        now = self.clock()
        if now < self.outage_until:
            return None
        charges = self._charges(tenant, tokens)
        for i, (_, bucket, cost) in enumerate(charges):
            if not bucket.take(cost, now):
                for _, b, c in charges[:i]:
                    b.refund(c)
                return None
        for name, bucket, _ in charges:
            if bucket.needs_lease(now):
                self._lease_ahead(tenant.id, name, bucket)
        return self._admitted(tenant)

    async def admit(self, tenant: Tenant, tokens: int) -> Verdict:
        """Spend one request and ``tokens`` of the tenant's limits, leasing on the request path where
        nothing is held, or say which ran out and for how long."""
        spent: list[tuple[Bucket, float]] = []
        for name, bucket, cost in self._charges(tenant, tokens):
            now = self.clock()
            if now >= self.outage_until and bucket.take(cost, now):  # enough is held
                if bucket.needs_lease(now):
                    self._lease_ahead(tenant.id, name, bucket)
            elif not await self._spend(tenant.id, name, bucket, cost):
                for b, c in spent:  # what passed the other dimension is given back
                    b.refund(c)
                wait = bucket.retry_after(self.clock())
                return Verdict(False, self.headers(tenant), wait, name)
            spent.append((bucket, cost))
        return self._admitted(tenant)

    async def enter(self, tenant: Tenant) -> tuple[Verdict | None, Ticket | None]:
        """A slot of the tenant's concurrent-request limit for one request: a refusal, or the ticket to
        ``leave`` with when the request is done."""
        limit = tenant.limits.max_concurrent
        if limit is None:
            return None, None
        slots = self.slots.get(tenant.id)
        if slots is None or slots.limit != limit:
            slots = self.slots[tenant.id] = Slots(limit)
        # none held is free: ask for more, unless the primary just had none (no call per refusal)
        if (
            self.clock() >= self.outage_until
            and not slots.take()
            and (slots.refused(self.clock()) or not await self._more(tenant.id, slots))
        ):
            return self._at_limit(tenant), None
        if self.clock() < self.outage_until:
            if not slots.take_local(self.edges):
                return self._at_limit(tenant), None
            return None, Ticket(tenant.id, slots, local=True)
        if slots.needs_more():
            slots.asking = True
            self._background(self._hold_ahead(tenant.id, slots))
        return None, Ticket(tenant.id, slots, local=False)

    async def _more(self, tenant: str, slots: Slots) -> bool:
        """No slot held is free: wait for a bigger holding. True when a slot of it is this request's, or the
        primary went out meanwhile (the local share decides)."""
        self.waited("slots")
        slots.waiting += 1
        try:
            await self._hold(tenant, slots, None)
        finally:
            slots.waiting -= 1
        return self.clock() < self.outage_until or slots.take()

    def _at_limit(self, tenant: Tenant) -> Verdict:
        return Verdict(False, self.headers(tenant), 1.0, "concurrent")

    async def _hold_ahead(self, tenant: str, slots: Slots) -> None:
        try:
            await self._hold(tenant, slots, None)
        finally:
            slots.asking = False

    def leave(self, ticket: Ticket) -> None:
        """The request holding ``ticket`` is done: its slot is free (and idle spare may go back)."""
        slots = ticket.slots
        if ticket.local:
            slots.local -= 1
            return
        down_to = slots.release()
        if down_to is not None:
            self._background(self._hold(ticket.tenant, slots, down_to))

    async def _hold(self, tenant: str, slots: Slots, want: int | None) -> None:
        """Set this edge's holding (None: what it needs now). One call at a time per tenant, the amount
        decided when it is its turn: an answer never lowers the holding below what is in use, and what is
        given back is not spent here while the primary answers."""
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            if want is None and (slots.in_use < slots.held or slots.refused(self.clock())):
                return  # answered while this waited: a slot is free here, or the primary has none
            need = slots.in_use + slots.waiting
            amount = max(need, slots.wanted() if want is None else want)
            # slots being given back are not taken while the primary answers: it may grant them elsewhere
            slots.held = min(slots.held, amount)
            try:
                granted = await self.slots_script(
                    keys=[limit_key(tenant, "concurrent")],
                    args=[self.edge_id, amount, slots.limit, int(SLOTS_TTL_S * 1000)],
                )
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                self.outage(exc)
                return
            slots.held = int(granted)
            if slots.held < need:  # a request waiting here gets no slot
                slots.refused_at = self.clock()

    def start(self) -> None:
        """Register this edge process and keep its holdings alive, in the background, until ``close``."""
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew(), name="limits-renewer")

    async def _renew(self) -> None:
        """Every ``REGISTER_S``, this process's registration (so the outage share counts the live edge
        processes); every third of SLOTS_TTL_S, its slot holdings, so a crashed edge's expire."""
        renewed = self.clock()
        while True:
            await self._register()
            now = self.clock()
            for (tenant, name), bucket in list(self.buckets.items()):
                if bucket.stale(now) and not bucket.asking:  # a lease nobody here spends goes back
                    self._lease_ahead(tenant, name, bucket)
            if self.clock() - renewed >= SLOTS_TTL_S / 3:
                renewed = self.clock()
                for tenant, slots in list(self.slots.items()):
                    if slots.held:  # renewed down to what is in use: idle spare goes back to the others
                        await self._hold(tenant, slots, slots.in_use)
            await asyncio.sleep(REGISTER_S)

    async def _register(self) -> None:
        try:
            live = await self.edges_script(
                keys=[KEY_LIVE_EDGES], args=[self.edge_id, int(3 * REGISTER_S * 1000)]
            )
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            self.outage(exc)
            return
        self.edges = max(1, int(live))
        lasted = self.episode.ended(self.clock())
        if lasted is not None:
            log.warning(
                "limits: the primary takes the limit scripts again after %.0f s; the shared counts decide",
                lasted,
            )
        for bucket in self.buckets.values():
            if bucket.edges != self.edges:
                bucket.share(self.edges)

    def outage(self, exc: BaseException) -> None:
        """A call to the primary failed: the local share decides for ``OUTAGE_RETRY_S``. A refusal (an error
        the primary answered: NOPERM from a wrong ACL, or a primary out of memory) is logged as an error; an
        unreachable primary is an outage, logged as a warning; each when it begins, every
        ``OUTAGE_REMIND_S`` while it lasts, and its end when the primary takes the edge's registration."""
        refused = isinstance(exc, ResponseError)
        kind = "refused" if refused else "unreachable"
        if self.on_failure is not None:
            self.on_failure(kind)
        now = self.clock()
        self.outage_until = now + OUTAGE_RETRY_S
        lasted = self.episode.failed(now, kind)
        if lasted is None:
            return
        lasting = f" for {lasted:.0f} s" if lasted else ""
        if refused:
            why = refusal(exc)
            log.error(
                "limits: the primary refused the limit script%s (%s); enforcing this edge's share (1/%d) "
                "— %s",
                lasting,
                exc,
                self.edges,
                "check the edge's Redis ACL user" if why is None else f"it is {why}",
            )
        else:
            log.warning(
                "limits: the primary is unreachable%s (%s); enforcing this edge's share (1/%d)",
                lasting,
                exc,
                self.edges,
            )

    def _background(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def settle(self, tenant: Tenant, reserved: int, used: int) -> None:
        """A request's real token usage against its reservation: the difference back to (or from) the
        edge's lease, so a tenant pays for what it used; a debt goes to the primary at once."""
        bucket = self.buckets.get((tenant.id, "tokens"))
        if bucket is not None:
            bucket.refund(reserved - used)
            if bucket.needs_lease(self.clock()):
                self._lease_ahead(tenant.id, "tokens", bucket)

    def _admitted(self, tenant: Tenant) -> Verdict:
        """The admitted verdict and its headers, rebuilt at most every ``HEADERS_TTL_S`` per tenant (their
        numbers move with leases, not with each request)."""
        now = self.clock()
        hit = self._verdicts.get(tenant.id)
        if hit is not None and now - hit[1] < HEADERS_TTL_S and hit[2] is tenant.limits:
            return hit[0]
        verdict = Verdict(True, self.headers(tenant))
        self._verdicts[tenant.id] = (verdict, now, tenant.limits)
        return verdict

    def headers(self, tenant: Tenant) -> dict[str, str]:
        """x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the last word of the primary."""
        out: dict[str, str] = {}
        now = self.clock()
        for name, field in DIMENSIONS:
            limit = getattr(tenant.limits, field)
            if limit is None:
                continue
            backlog_s, at = self.backlog.get((tenant.id, name), (0.0, now))
            backlog = max(0.0, backlog_s - (now - at))  # the queue of spent permits drains at the rate
            remaining = max(0, limit - math.ceil(backlog * limit / 60.0))
            limit_h, remaining_h, reset_h = HEADER_NAMES[name]
            out[limit_h] = str(limit)
            out[remaining_h] = str(remaining)
            out[reset_h] = _duration(backlog)
        return out

    def _bucket(self, tenant: Tenant, name: str, limit: int) -> Bucket:
        bucket = self.buckets.get((tenant.id, name))
        burst = tenant.limits.burst_s
        if bucket is None or bucket.limit != limit or bucket.burst_s != burst:
            # a new limit starts a new local view (what is held at the old rate is dropped, a debt is kept)
            debt = 0.0 if bucket is None else min(0.0, bucket.held)
            bucket = self.buckets[(tenant.id, name)] = Bucket(limit, burst, held=debt, edges=self.edges)
        return bucket

    async def _spend(self, tenant: str, name: str, bucket: Bucket, cost: float) -> bool:
        """Too little held (or the primary is out): the local share, or a lease of what is missing on the
        request path — a lease another request already asked for first, then one's own, which the primary
        grants to this request whole or refuses (nothing runs between its answer and the take): a burst
        sharing a small lease is refused only by the primary's word."""
        for own in (False, True):
            now = self.clock()
            if now < self.outage_until:
                return bucket.local_share(cost, now, self.edges)
            if now < bucket.refused_at + bucket.wait_s:
                return False
            if not own:
                self.waited("lease")
            await self._lease(tenant, name, bucket, cost, own=own)
            now = self.clock()
            if now < self.outage_until:
                return bucket.local_share(cost, now, self.edges)
            if bucket.take(cost, now):
                if bucket.needs_lease(now):
                    self._lease_ahead(tenant, name, bucket)
                return True
        return False

    def waited(self, what: str) -> None:
        """A request waits for a call to the primary (what the edge did not hold ahead)."""
        if self.on_wait is not None:
            self.on_wait(what)

    def _lease_ahead(self, tenant: str, name: str, bucket: Bucket) -> None:
        """The next lease, in the background, before this one runs out (a stale one: given back only)."""
        self._background(self._lease(tenant, name, bucket, 0))

    async def _lease(self, tenant: str, name: str, bucket: Bucket, cost: float, *, own: bool = False) -> None:
        """One lease from the primary; a request that finds one already asked for waits for that one (a
        burst of requests on an empty bucket costs one round trip, not one each, and cannot run the
        tenant's theoretical arrival time past the tolerance with leases nobody needed) unless it asks for
        its ``own`` (the shared one went to others)."""
        pending = self._pending.get((tenant, name))
        if pending is not None and own:
            await self._ask(tenant, name, bucket, cost)
            return
        if pending is not None:
            await asyncio.shield(pending)
            return
        done = asyncio.get_running_loop().create_future()
        self._pending[(tenant, name)] = done
        try:
            await self._ask(tenant, name, bucket, cost)
        finally:
            del self._pending[(tenant, name)]
            done.set_result(None)

    async def _ask(self, tenant: str, name: str, bucket: Bucket, cost: float) -> None:
        """Lease at least what ``cost`` lacks (granted whole while the tenant has any room: a request above
        the burst is not refused forever, its excess is the tenant's debt), and settle this edge's carry."""
        bucket.asking = True
        asked = now = self.clock()
        need, carry = bucket.shortfall(cost, now) if cost else 0, bucket.carry(now)
        interval_ms = 60_000.0 / bucket.limit
        try:
            granted, wait_ms, backlog_ms = await self.script(
                keys=[limit_key(tenant, name)],
                args=[
                    repr(interval_ms),
                    bucket.tolerance_s() * 1000.0,
                    bucket.asked(need, now),
                    need,
                    carry,
                ],
            )
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            bucket.asking = False
            self.outage(exc)
            return
        now = self.clock()
        bucket.granted(int(granted), carry, int(wait_ms) / 1000.0, now, asked=asked)
        self.backlog[(tenant, name)] = (int(backlog_ms) / 1000.0, now)

    async def close(self) -> None:
        for t in [*self._tasks, *([self._renewer] if self._renewer else [])]:
            t.cancel()
        with contextlib.suppress(Exception):  # leave the registry at once (else it expires)
            async with asyncio.timeout(0.5):
                await self.client.hdel(KEY_LIVE_EDGES, self.edge_id)
        try:
            async with asyncio.timeout(1.0):
                await self.client.aclose()
        except Exception:  # closing a dead connection may fail; nothing to do
            pass
