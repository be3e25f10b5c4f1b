"""Batches to the Redis primary (I/O): every interval, this edge's per-region observations (XADD to its own
observation stream, best effort: a failed batch is counted and dropped) and the snapshot and key set it
applied last, with when (its own hash: the control plane's switch runs read when each edge applied a change,
and its keeper whether the store went back behind the edges); and its usage
ledger (HINCRBY into its own hash per tenant and hour; a failed batch goes back into the ledger and is sent
with the next). Failures are never raised into the data plane."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from edge.telemetry.active import Active
from edge.telemetry.observed import Observed
from edge.telemetry.usage import Ledger
from fleet.keys import active_key, applied_key, cancel_key, observations_key, traffic_key, usage_key
from fleet.redisconn import raise_if_cancelling
from fleet.state import Applied
from fleet.usage import COUNTERS, RETENTION_S, TRAFFIC_RETENTION_S, UsageRow, usage_field

log = logging.getLogger("meridian.reporter")

STREAM_MAXLEN = 100_000


class Reporter:
    def __init__(
        self,
        *,
        client: aioredis.Redis,
        edge: str,
        observed: Observed,
        interval_s: float,
        dropped: Counter,
        applied: Callable[[], Applied | None] = lambda: None,
        active: Active | None = None,
    ) -> None:
        self.active = active  # its requests in flight: published each interval, an operator's cancels read
        self.client = client
        self.applied = applied  # the current snapshot's and key set's positions, when, the explainer's URL
        self.dropped = dropped  # rows that could not be sent (meridian_edge_observations_dropped_total)
        self.edge = edge
        self.observed = observed
        self.interval_s = interval_s
        self.sent = 0
        self.failed = 0

    async def flush(self) -> None:
        batch = self.observed.drain()
        if not batch:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for region, row in batch.items():
                    fields: dict[Any, Any] = {
                        "edge": self.edge,
                        "region": region,
                    }
                    fields.update({k: f"{v:.3f}" for k, v in row.items()})
                    pipe.xadd(observations_key(self.edge), fields, maxlen=STREAM_MAXLEN, approximate=True)
                await pipe.execute()
            self.sent += len(batch)
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            self.failed += len(batch)
            self.dropped.inc(len(batch))
            log.debug("observation batch dropped: %s", exc)

    async def report_applied(self) -> None:
        """The snapshot this edge applied last, and when (and where its route explainer listens), every
        interval, not only when it changes: a primary that lost its data has it back within an interval,
        and a control plane that finds no state there but this knows the store lived before (a loss, not a
        new store)."""
        now = self.applied()
        if now is None:
            return
        try:
            report = dataclasses.replace(now, reported=time.time())
            await self.client.hset(applied_key(self.edge), mapping=dict[Any, Any](report.fields()))
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.debug("applied snapshot not reported: %s", exc)

    async def report_active(self) -> None:
        """The requests in flight here, for the console (gone within a few intervals if this edge stops),
        and the cancels operators asked for: each found request's task is cancelled, every one cleared."""
        if self.active is None:
            return
        now = time.monotonic()
        data = json.dumps(self.active.snapshot(now, time.time()), separators=(",", ":"))
        key, cancels = active_key(self.edge), cancel_key(self.edge)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping={"data": data, "at": int(time.time() * 1000)})
                pipe.pexpire(key, int(max(3.0, 3 * self.interval_s) * 1000))
                pipe.hgetall(cancels)
                *_, asked = await pipe.execute()
            if asked:
                for request in asked:
                    if self.active.cancel(request.decode() if isinstance(request, bytes) else request):
                        log.info("request %s cancelled by an operator", request)
                await self.client.hdel(cancels, *asked)
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.debug("requests in flight not reported: %s", exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()
            await self.report_applied()
            await self.report_active()


class UsageWriter:
    def __init__(
        self, *, client: aioredis.Redis, edge: str, ledger: Ledger, interval_s: float, dropped: Counter
    ) -> None:
        self.client = client
        self.edge = edge  # its hashes carry its name: its ACL user may write no other edge's (fleet.acl)
        self.ledger = ledger
        self.interval_s = interval_s
        self.dropped = dropped  # rows the ledger could not hold (meridian_edge_usage_rows_dropped_total)
        self.written = 0

    async def flush(self) -> None:
        """One batch: every row's counters added to its tenant's hour, whose expiry is pushed out."""
        ledger = self.ledger
        if ledger.dropped:
            self.dropped.inc(ledger.dropped)
            ledger.dropped = 0
        batch, traffic = ledger.drain(), ledger.drain_traffic()
        if not batch and not traffic:
            return
        try:
            async with self.client.pipeline(transaction=True) as pipe:  # all of the batch or none of it
                keys = set()
                for (tenant, model, region, hour), row in batch.items():
                    key = usage_key(self.edge, tenant, hour)
                    keys.add(key)
                    for counter in COUNTERS:
                        n = getattr(row, counter)
                        if n:
                            pipe.hincrby(key, usage_field(region, counter, model), n)
                for key in keys:
                    pipe.expire(key, RETENTION_S)
                minutes = set()
                for (model, region, minute), row in traffic.items():
                    key = traffic_key(self.edge, region, minute)
                    minutes.add(key)
                    for counter in COUNTERS:
                        if n := getattr(row, counter):
                            pipe.hincrby(key, f"{counter}|{model}", n)
                for key in minutes:
                    pipe.expire(key, TRAFFIC_RETENTION_S)
                await pipe.execute()
            self.written += len(batch)
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            ledger.restore(batch)  # sent again with the next batch: usage is for bills, not best effort
            for at, row in traffic.items():
                ledger.traffic.setdefault(at, UsageRow()).merge(row)
            log.debug("usage batch kept for the next try: %s", exc)

    async def run(self) -> None:
        """A batch every interval; the edge's stop sends the last one (after this task has ended)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()
