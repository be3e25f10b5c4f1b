"""Follow something in this region's Redis replica by polling (I/O): one client, one ``step`` every
``interval_s``, trouble logged once per new reason, the last good state kept by the caller through it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fleet.redisconn import raise_if_cancelling, redact

log = logging.getLogger("meridian.polling")


async def poll(
    *,
    url: str,
    connect: Callable[[str], aioredis.Redis],
    interval_s: float,
    step: Callable[[aioredis.Redis], Awaitable[None]],
    what: str,
) -> None:
    client = connect(url)
    trouble: str | None = None
    try:
        while True:
            try:
                await step(client)
                trouble = None
            except (RedisError, OSError, ValueError) as exc:
                raise_if_cancelling(exc)
                if str(exc) != trouble:  # once per new reason
                    log.warning("cannot read %s at %s: %s", what, redact(url), exc)
                    trouble = str(exc)
            await asyncio.sleep(interval_s)
    finally:
        try:
            async with asyncio.timeout(1.0):
                await client.aclose()
        except Exception:  # closing a dead connection may fail; nothing to do
            pass
