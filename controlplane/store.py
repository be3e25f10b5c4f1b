"""Redis I/O for the control plane: versioned region state, change feed, audit stream, observation intake.

Every change runs in one optimistic transaction (WATCH/MULTI): it bumps the global version, rewrites the
region's JSON, appends to the audit stream and PUBLISHes on the change channel, so replicas (and the
edges subscribed to them) see state and announcement together.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fleet.state import (
    CHANNEL_CHANGES,
    KEY_AUDIT,
    KEY_OBSERVATIONS,
    KEY_REGIONS,
    KEY_VERSION,
    Region,
    RegionState,
    Topology,
    change_message,
    initial_state,
)

AUDIT_MAXLEN = 10_000


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The Redis primary cannot take writes (down, unreachable, or a read-only replica)."""


class RegionNotFound(StoreError):
    pass


class VersionConflict(StoreError):
    def __init__(self, current: int) -> None:
        super().__init__(f"region changed since version; current version is {current}")
        self.current = current


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    reason: str
    action: str


Mutation = Callable[[RegionState], RegionState | None]

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ConnectionError, OSError)


class StateStore:
    """The control plane's handle on the Redis primary."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    async def seed(self, topology: Topology, *, now: float) -> list[str]:
        """Create regions missing from the store, drop regions no longer in the topology.

        Existing regions keep their operator state (weight, drain) across control-plane restarts.
        Returns the names of regions that changed.
        """
        changed: list[str] = []
        try:
            existing = await self.redis.hkeys(KEY_REGIONS)
            have = {k.decode() if isinstance(k, bytes) else k for k in existing}
            for region in topology.regions:
                if region.name not in have:
                    await self._write(region.name, _creator(region, now=now), create=True)
                    changed.append(region.name)
            for stale in have - set(topology.names):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.hdel(KEY_REGIONS, stale)
                    pipe.incr(KEY_VERSION)
                    res = await pipe.execute()
                    await self.redis.publish(CHANNEL_CHANGES, change_message(version=res[1], region=stale))
                changed.append(stale)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return changed

    async def all(self) -> tuple[int, dict[str, RegionState]]:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(KEY_VERSION)
                pipe.hgetall(KEY_REGIONS)
                version_raw, raw = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        regions = {}
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            regions[name] = RegionState.decode(v)
        return int(version_raw or 0), regions

    async def get(self, name: str) -> RegionState:
        try:
            raw = await self.redis.hget(KEY_REGIONS, name)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        if raw is None:
            raise RegionNotFound(name)
        return RegionState.decode(raw)

    async def update(
        self,
        name: str,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[RegionState, RegionState]:
        """Apply ``mutate`` atomically; returns (before, after). ``mutate`` returning None means no change."""
        try:
            return await self._write(name, mutate, expected_version=expected_version, audit=audit)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _write(
        self,
        name: str,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
        audit: AuditEntry | None = None,
        create: bool = False,
    ) -> tuple[RegionState, RegionState]:
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(KEY_REGIONS, KEY_VERSION)
                    raw = await pipe.hget(KEY_REGIONS, name)
                    if raw is None and not create:
                        raise RegionNotFound(name)
                    before = RegionState.decode(raw) if raw is not None else RegionState(name=name)
                    if expected_version is not None and before.version != expected_version:
                        raise VersionConflict(before.version)
                    after = mutate(before)
                    if after is None:
                        await pipe.reset()
                        return before, before
                    version = int(await pipe.get(KEY_VERSION) or 0) + 1
                    after = after.model_copy(update={"version": version, "updated_at": time.time()})
                    pipe.multi()
                    pipe.set(KEY_VERSION, version)
                    pipe.hset(KEY_REGIONS, name, after.encode())
                    if audit is not None:
                        pipe.xadd(
                            KEY_AUDIT,
                            {
                                "at": f"{time.time():.3f}",
                                "actor": audit.actor,
                                "reason": audit.reason,
                                "action": audit.action,
                                "region": name,
                                "before": before.encode(),
                                "after": after.encode(),
                            },
                            maxlen=AUDIT_MAXLEN,
                            approximate=True,
                        )
                    pipe.publish(CHANNEL_CHANGES, change_message(version=version, region=name))
                    await pipe.execute()
                    return before, after
                except WatchError:
                    continue

    async def audit_log(self, *, limit: int = 100, region: str | None = None) -> list[dict[str, Any]]:
        try:
            rows: Any = await self.redis.xrevrange(KEY_AUDIT, count=limit if region is None else limit * 10)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        out: list[dict[str, Any]] = []
        for entry_id, fields in rows:
            f = {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in fields.items()
            }
            if region is not None and f.get("region") != region:
                continue
            out.append(
                {
                    "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                    "at": float(f["at"]),
                    "actor": f["actor"],
                    "reason": f["reason"],
                    "action": f["action"],
                    "region": f["region"],
                    "before": json.loads(f["before"]),
                    "after": json.loads(f["after"]),
                }
            )
            if len(out) >= limit:
                break
        return out

    async def read_observations(self, last_id: str, *, block_ms: int) -> tuple[str, list[dict[str, str]]]:
        """Read edge observations after ``last_id`` (blocking up to block_ms)."""
        resp: Any = await self.redis.xread({KEY_OBSERVATIONS: last_id}, block=block_ms, count=1000)
        out: list[dict[str, str]] = []
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append(
                    {
                        (k.decode() if isinstance(k, bytes) else k): (
                            v.decode() if isinstance(v, bytes) else v
                        )
                        for k, v in fields.items()
                    }
                )
        return last_id, out


def _creator(region: Region, *, now: float) -> Mutation:
    def create(_: RegionState) -> RegionState:
        return initial_state(region, now=now)

    return create


def is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, (*_UNAVAILABLE, StoreUnavailable)) or (
        isinstance(exc, RedisError) and "READONLY" in str(exc)
    )
