"""What the world looks like (I/O): load region state from this region's Redis replica, follow the change
feed, resync periodically, and hold the last good immutable Snapshot through Redis outages. What may replace
it is decided by ``edge.routing.acceptance`` (never older, never partial, bad records quarantined)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.routing.acceptance import judge
from fleet.keys import CHANNEL_CHANGES, KEY_EPOCH, KEY_REGIONS, KEY_VERSION
from fleet.redisconn import raise_if_cancelling, redact
from fleet.state import Snapshot, decode_records

log = logging.getLogger("meridian.snapshot")


CLOSE_TIMEOUT_S = 1.0
FIRST_SNAPSHOT_S = 2.0  # a first snapshot from the primary: this long at most per try
FIRST_REPLICA_S = 0.5  # with no snapshot yet, a replica slower than this to answer: the primary's first


class SnapshotFeed:
    """Keeps ``current`` fresh; never replaces a good snapshot with an older, partial or invalid one."""

    def __init__(
        self,
        *,
        url: str,
        resync_interval_s: float,
        topology: tuple[str, ...],
        connect: Callable[[str], aioredis.Redis],
        on_refused: Callable[[str], None] = lambda reason: None,
        first_from: str | None = None,
    ) -> None:
        self.url = url
        self.first_from = first_from  # the primary: a first snapshot from it while the replica cannot answer
        self.resync_interval_s = resync_interval_s
        self.topology = topology
        self._connect = connect
        self._on_refused = on_refused
        self.refusal: str | None = None  # why the store's latest state was not taken (None: it was)
        self._unreachable: str | None = None  # the last connection error logged
        self.current: Snapshot | None = None
        self.applied_at = 0.0  # wall time ``current`` was applied (reported: when a switch reached this edge)
        self.confirmed_at: float | None = None  # monotonic time of the last successful read
        self.connected = False
        self._news = asyncio.Event()  # set (and replaced) whenever ``current`` changes

    async def news(self) -> None:
        """Until ``current`` changes."""
        await self._news.wait()

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the snapshot was last confirmed against Redis (None before the first load)."""
        if self.confirmed_at is None:
            return None
        return (time.monotonic() if now is None else now) - self.confirmed_at

    async def load(self, client: aioredis.Redis) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(KEY_EPOCH)
            pipe.get(KEY_VERSION)
            pipe.hgetall(KEY_REGIONS)
            epoch_raw, version_raw, raw = await pipe.execute()
        now = time.monotonic()
        regions, invalid = decode_records(raw)
        verdict = judge(
            self.current,
            epoch=int(epoch_raw or 0),
            version=int(version_raw or 0),
            regions=regions,
            invalid=invalid,
            topology=self.topology,
            taken_at=now,
        )
        refusal = None if verdict.refused is None else f"{verdict.refused}: {verdict.detail}"
        if verdict.refused is not None and (self.current is not None or verdict.refused != "incomplete"):
            # counted: a store that would take a snapshot back; not a store still being seeded (no
            # snapshot yet, some regions' records not written: every fresh fleet starts so)
            self._on_refused(verdict.refused)
            if refusal != self.refusal:  # say it once per new reason, not every resync
                (log.info if self.current is None else log.warning)(
                    "state store %s: %s; %s",
                    verdict.refused,
                    verdict.detail,
                    "routing on the last good snapshot" if self.current else "no snapshot yet",
                )
        self.refusal = refusal
        if verdict.snapshot is None:
            return
        if verdict.refused is None or verdict.snapshot is not self.current:
            self.confirmed_at = now
        if verdict.snapshot is not self.current:
            if self.current is not None and verdict.snapshot.epoch != self.current.epoch:
                log.warning(
                    "state store began a new epoch (%d, was %d): it was initialised or went back, and this "
                    "edge takes what it holds (docs/runbooks.md: the state store lost its state)",
                    verdict.snapshot.epoch,
                    self.current.epoch,
                )
            self._news.set()
            self._news = asyncio.Event()
            self.applied_at = time.time()
        self.current = verdict.snapshot

    async def _first_snapshot(self, url: str) -> None:
        """An edge that has never had a snapshot and whose replica cannot answer takes one from the primary
        (once per failed try, bounded), rather than route on regions.yaml alone — which knows nothing of
        dials, drains, or replicas switched off. The replica is followed again as soon as it answers; a
        snapshot older than this one is refused as ever."""
        client = self._connect(url)
        try:
            async with asyncio.timeout(FIRST_SNAPSHOT_S):
                await self.load(client)
            if self.current is not None:
                log.info(
                    "took a first snapshot from the primary at %s (the replica cannot answer)", redact(url)
                )
        except (RedisError, OSError, ValueError, TimeoutError) as exc:
            raise_if_cancelling(exc)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await client.aclose()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            client = self._connect(self.url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                first = self.current is None and self.first_from is not None
                async with asyncio.timeout(FIRST_REPLICA_S if first else None):  # then try the primary
                    await pubsub.subscribe(CHANNEL_CHANGES)
                    await self.load(client)
                if not self.connected:
                    log.info("following the state store at %s", redact(self.url))
                self.connected = True
                self._unreachable = None
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
                    log.warning(
                        "lost the state store at %s: %s; routing on the last snapshot", redact(self.url), exc
                    )
                elif self._unreachable != str(exc):  # never reached, or a new reason: say it once
                    log.warning(
                        "cannot reach the state store at %s: %s; %s",
                        redact(self.url),
                        exc,
                        "routing on the last snapshot" if self.current else "routing on regions.yaml alone",
                    )
                self._unreachable = str(exc)
                self.connected = False
                if self.current is None and self.first_from is not None:
                    await self._first_snapshot(self.first_from)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                try:  # bounded: a close that waits on a connection the cancel interrupted must not hang us
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await pubsub.aclose()
                        await client.aclose()
                except Exception:  # closing a dead connection may fail or time out; nothing to do
                    pass
