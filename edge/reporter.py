"""Best-effort observation batches (I/O): every interval, XADD this edge's per-region figures to the
primary's observation stream; failures are counted, never raised into the data plane."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from edge.observed import Observed
from fleet.redisconn import raise_if_cancelling
from fleet.state import KEY_OBSERVATIONS

log = logging.getLogger("meridian.reporter")

STREAM_MAXLEN = 100_000


class Reporter:
    def __init__(
        self, *, client: aioredis.Redis, edge: str, observed: Observed, interval_s: float, dropped: Counter
    ) -> None:
        self.client = client
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
                    pipe.xadd(KEY_OBSERVATIONS, fields, maxlen=STREAM_MAXLEN, approximate=True)
                await pipe.execute()
            self.sent += len(batch)
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            self.failed += len(batch)
            self.dropped.inc(len(batch))
            log.debug("observation batch dropped: %s", exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()
