"""What the world looks like (I/O): load region state from this region's Redis replica, follow the change
feed, resync periodically, and hold the last good immutable Snapshot through Redis outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fleet.redisconn import raise_if_cancelling
from fleet.state import CHANNEL_CHANGES, KEY_REGIONS, KEY_VERSION, Snapshot, decode_snapshot

log = logging.getLogger("meridian.snapshot")


CLOSE_TIMEOUT_S = 1.0


class SnapshotFeed:
    """Keeps ``current`` fresh; never replaces a good snapshot with an empty one."""

    def __init__(
        self,
        *,
        url: str,
        resync_interval_s: float,
        known_regions: frozenset[str],
        connect: Callable[[str], aioredis.Redis],
    ) -> None:
        self.url = url
        self.resync_interval_s = resync_interval_s
        self.known_regions = known_regions
        self._connect = connect
        self.current: Snapshot | None = None
        self.confirmed_at: float | None = None  # monotonic time of the last successful read
        self.connected = False

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the snapshot was last confirmed against Redis (None before the first load)."""
        if self.confirmed_at is None:
            return None
        return (time.monotonic() if now is None else now) - self.confirmed_at

    async def load(self, client: aioredis.Redis) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(KEY_VERSION)
            pipe.hgetall(KEY_REGIONS)
            version_raw, raw = await pipe.execute()
        now = time.monotonic()
        snap = decode_snapshot(int(version_raw or 0), raw, taken_at=now)
        if not (set(snap.regions) & self.known_regions):
            (log.info if self.current is None else log.warning)(
                "store holds no known region (version %s); keeping the last good snapshot", snap.version
            )
            return
        self.confirmed_at = now
        cur = self.current
        if cur is None or cur.version != snap.version or cur.regions != snap.regions:
            self.current = snap

    async def run(self) -> None:
        backoff = 0.05
        while True:
            client = self._connect(self.url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL_CHANGES)
                await self.load(client)
                self.connected = True
                backoff = 0.05
                while True:
                    msg = await pubsub.get_message(timeout=self.resync_interval_s)
                    if msg is not None:  # coalesce a burst of changes into one reload
                        while await pubsub.get_message(timeout=0) is not None:
                            pass
                    await self.load(client)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                raise_if_cancelling(exc)
                if self.connected:
                    log.warning("lost the state store at %s: %s; routing on the last snapshot", self.url, exc)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                try:  # bounded: a close that waits on a connection the cancel interrupted must not hang us
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await pubsub.aclose()
                        await client.aclose()
                except Exception:  # closing a dead connection may fail or time out; nothing to do
                    pass
