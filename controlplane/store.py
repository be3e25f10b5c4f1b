"""Redis I/O for the control plane: versioned region state, change feed, audit stream, observation intake,
and the control plane's own copy of what the store held, restored when the store comes back empty or old.

Every change runs in one optimistic transaction (WATCH/MULTI): it bumps the global version, rewrites the
region's JSON, appends to the audit stream and PUBLISHes on the change channel, so replicas (and the
edges subscribed to them) see state and announcement together. A write never lands on a store that is
behind the copy (it answers "restoring" until ``check`` has put the copy back, audited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fleet.keys import (
    CHANNEL_CHANGES,
    KEY_API_KEYS,
    KEY_AUDIT,
    KEY_EDGES,
    KEY_EPOCH,
    KEY_POOLS,
    KEY_REGIONS,
    KEY_SIGNALS,
    KEY_TENANTS,
    KEY_TENANTS_VERSION,
    KEY_VERSION,
    applied_key,
    observations_key,
)
from fleet.redisconn import refusal
from fleet.state import (
    Applied,
    Region,
    RegionState,
    Topology,
    change_message,
    decode_records,
    initial_state,
    next_epoch,
    went_back,
    why_invalid,
)

log = logging.getLogger("meridian.store")

AUDIT_MAXLEN = 10_000


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The Redis primary cannot take writes (down, unreachable, or a read-only replica)."""


class StoreRefusing(StoreUnavailable):
    """The Redis primary answers but refuses writes (``fleet.redisconn.refusal``: out of memory, or unable
    to persist); ``why`` says which."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the state store primary refuses writes: it is {why}")
        self.why = why


class StoreBusy(StoreError):
    """Every connection to the primary is in use and none came free in time: Redis is fine, we are busy."""


class StoreBehind(StoreError):
    """The store holds less than the control plane last knew (it came back empty or from an old copy): the
    copy is being put back; writes wait for it."""


class RegionNotFound(StoreError):
    pass


class InvalidRecord(StoreError):
    """The stored record of a region fails validation (a PATCH through the API repairs it)."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__(f"the stored record of {name} is invalid: {error}")
        self.name = name


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

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    ConnectionError,
    OSError,
)


@contextlib.asynccontextmanager
async def raise_unavailable() -> AsyncIterator[None]:
    """Redis client errors inside as the store's own (busy, or unavailable)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise _classify(exc) from exc


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _classify(exc: Exception) -> StoreError:
    """A Redis client error as the store's own: a pool with no free connection is busy, not down; a primary
    out of memory refuses writes."""
    if "No connection available" in str(exc) or "Too many connections" in str(exc):
        return StoreBusy("every connection to the state store is in use")
    why = refusal(exc)
    if why is not None:
        return StoreRefusing(why)
    return StoreUnavailable(str(exc))


@dataclass
class StateCopy:
    """What the control plane last knew the store held: its position, every region's record, the audit."""

    epoch: int = 0
    version: int = 0
    regions: dict[str, str] = field(default_factory=dict)
    tenants_version: int = 0
    tenants: dict[str, str] = field(default_factory=dict)  # tenant id -> record
    api_keys: dict[str, str] = field(default_factory=dict)  # key digest -> record
    audit: deque[tuple[str, dict[str, str]]] = field(default_factory=lambda: deque(maxlen=AUDIT_MAXLEN))

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.version

    def tenants_written(
        self,
        *,
        version: int,
        tenants: dict[str, str | None],
        keys: dict[str, str | None],
        audit: tuple[str, dict[str, str]],
    ) -> None:
        """A tenant or key write the store acknowledged (``None``: deleted), in the copy before the API
        answers: a restore can then never bring back a revoked key or an old limit."""
        for into, changes in ((self.tenants, tenants), (self.api_keys, keys)):
            for k, v in changes.items():
                if v is None:
                    into.pop(k, None)
                else:
                    into[k] = v
        self.tenants_version = max(self.tenants_version, version)
        self.add_audit(*audit)

    def add_audit(self, entry_id: str, fields: dict[str, str]) -> None:
        """Keep an audit entry once, in stream order (the write path and the mirror may both see it)."""
        if not self.audit or _stream_id(entry_id) > _stream_id(self.audit[-1][0]):
            self.audit.append((entry_id, fields))


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class StoreMetrics:
    """What the control plane found the store in and did about it."""

    events: Counter
    epoch: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry | None = None) -> StoreMetrics:
        events = Counter(
            "meridian_store_events",
            "State store events the control plane acted on: restore (the store came back empty or behind, "
            "its copy put back), initialise (the store held no state and there was no copy: a new epoch), "
            "new_epoch (the store went back behind what edges applied and there was no copy: a new epoch "
            "over what it holds)",
            ["event"],
            registry=registry,
        )
        for event in ("restore", "initialise", "new_epoch"):
            events.labels(event=event)  # at 0 from the first scrape: the first one counts as an increase
        epoch = Gauge(
            "meridian_store_epoch_seconds",
            "When the store's state began: its epoch, set when a store with no state was initialised or one "
            "behind the edges started a new epoch (Unix seconds; a store from before epochs were times reads "
            "near 0)",
            registry=registry,
        )
        return cls(events, epoch)


class StateStore:
    """The control plane's handle on the Redis primary."""

    def __init__(
        self, client: aioredis.Redis, *, topology: Topology | None = None, metrics: StoreMetrics | None = None
    ) -> None:
        self.redis = client
        self.topology = topology
        self.metrics = StoreMetrics.register() if metrics is None else metrics
        self.copy: StateCopy | None = None  # None until the first full read
        self._writing = asyncio.Lock()
        self.restores = 0

    async def seed(self, topology: Topology, *, now: float) -> list[str]:
        """Create regions missing from the store, drop regions no longer in the topology.

        Existing regions keep their operator state (weight, drain) across control-plane restarts. A store
        with no state at all (no epoch) starts a new epoch: see ``_initialise``.
        Returns the names of regions that changed.
        """
        changed: list[str] = []
        try:
            await self._initialise(now, topology.names)
            await self.redis.sadd(KEY_EDGES, *topology.names)  # kept: their usage is read after they go
            existing = await self.redis.hkeys(KEY_REGIONS)
            have = {_text(k) for k in existing}
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
            raise _classify(exc) from exc
        return changed

    async def _initialise(self, now: float, edges: Sequence[str]) -> None:
        """A store with no epoch holds no state: a new store, or one that lost its state while this control
        plane had no copy to put back (its primary's data and the control plane's memory lost together).
        Its epoch is newer than any epoch before it (``next_epoch``), so edges still holding a snapshot or
        key set of the old epoch take what the store holds from now on, rather than refusing every later
        change as older until its version caught up (seed 201 of the fault campaign)."""
        reports = await self.applied(edges)  # an edge reported a snapshot it applied: the store held state
        epoch = next_epoch(now, reports)
        if not await self.redis.set(KEY_EPOCH, epoch, nx=True):
            return
        self.metrics.events.labels(event="initialise").inc()
        log.log(
            logging.WARNING if reports else logging.INFO,
            "state store held no state (no epoch) and the control plane had no copy: started epoch %d with "
            "regions.yaml's regions and no tenants or keys; %s",
            epoch,
            "edges hold snapshots of an earlier state, so it held state before and lost it "
            "(docs/runbooks.md: the state store lost its state)"
            if reports
            else "a new store",
        )
        await self.append_audit(
            AuditEntry(
                actor="meridian-controlplane",
                reason="the store held no state and the control plane no copy of it: a new epoch, regions "
                "from regions.yaml, no tenants or keys",
                action="initialise",
            ),
            region="*",
            after={"epoch": epoch},
        )

    async def position(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The store's (epoch, version) and its key set's (epoch, tenants version), in one read (no MULTI: it
        answers while the primary refuses writes)."""
        try:
            epoch, version, tenants = await self.redis.mget(KEY_EPOCH, KEY_VERSION, KEY_TENANTS_VERSION)
        except _UNAVAILABLE as exc:
            raise _classify(exc) from exc
        return (int(epoch or 0), int(version or 0)), (int(epoch or 0), int(tenants or 0))

    async def applied(self, edges: Iterable[str]) -> dict[str, Applied]:
        """What each of ``edges`` reported it applied last (an edge that reported nothing is left out)."""
        names = list(edges)
        async with self.redis.pipeline(transaction=False) as pipe:
            for edge in names:
                pipe.hgetall(applied_key(edge))
            rows = await pipe.execute()
        reports = {edge: Applied.parse(row) for edge, row in zip(names, rows, strict=True)}
        return {edge: r for edge, r in reports.items() if r is not None}

    async def all(self) -> tuple[int, dict[str, RegionState], dict[str, str]]:
        """(version, valid regions, invalid regions and what is wrong with each)."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(KEY_VERSION)
                pipe.hgetall(KEY_REGIONS)
                version_raw, raw = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise _classify(exc) from exc
        regions, invalid = decode_records(raw)
        return int(version_raw or 0), regions, invalid

    async def get(self, name: str) -> RegionState:
        try:
            raw = await self.redis.hget(KEY_REGIONS, name)
        except _UNAVAILABLE as exc:
            raise _classify(exc) from exc
        if raw is None:
            raise RegionNotFound(name)
        try:
            return RegionState.decode(raw)
        except ValueError as exc:
            raise InvalidRecord(name, why_invalid(exc)) from None

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
            raise _classify(exc) from exc

    async def _write(
        self,
        name: str,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
        audit: AuditEntry | None = None,
        create: bool = False,
    ) -> tuple[RegionState, RegionState]:
        # every write bumps the one global version, so two writers of this process would always collide on
        # WATCH: they take turns here (one connection, no retry storm); WATCH still guards against others
        async with self._writing, self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    copy = self.copy
                    known = copy.position if copy is not None else None  # read first: a concurrent
                    # commit moves the copy only after the store, so a store below this lost data
                    await pipe.watch(KEY_REGIONS, KEY_VERSION, KEY_EPOCH)
                    version = int(await pipe.get(KEY_VERSION) or 0)
                    epoch = int(await pipe.get(KEY_EPOCH) or 0)
                    if known is not None and (epoch, version) < known:
                        raise StoreBehind(f"store at {(epoch, version)}, last known {known}")
                    raw = await pipe.hget(KEY_REGIONS, name)
                    if raw is None and not create:
                        raise RegionNotFound(name)
                    before = self._before(name, raw, repair=audit is not None)
                    if expected_version is not None and before.version != expected_version:
                        raise VersionConflict(before.version)
                    after = mutate(before)
                    if after is None:
                        await pipe.reset()
                        return before, before
                    version += 1
                    after = after.model_copy(update={"version": version, "updated_at": time.time()})
                    pipe.multi()
                    pipe.set(KEY_VERSION, version)
                    pipe.hset(KEY_REGIONS, name, after.encode())
                    entry = None
                    if audit is not None:
                        entry = {
                            "at": f"{time.time():.3f}",
                            "actor": audit.actor,
                            "reason": audit.reason,
                            "action": audit.action,
                            "region": name,
                            "before": before.encode(),
                            "after": after.encode(),
                        }
                        pipe.xadd(KEY_AUDIT, dict[Any, Any](entry), maxlen=AUDIT_MAXLEN, approximate=True)
                    pipe.publish(CHANNEL_CHANGES, change_message(version=version, region=name))
                    done = await pipe.execute()
                    if copy is not None:  # the copy follows every write at once, audit included
                        copy.epoch, copy.version = max(copy.position, (epoch, version))
                        copy.regions[name] = after.encode()
                        if entry is not None:
                            copy.add_audit(_text(done[2]), entry)
                    return before, after
                except WatchError:
                    continue

    def _before(self, name: str, raw: str | bytes | None, *, repair: bool) -> RegionState:
        """The region's stored state. An invalid record is repaired from the topology's defaults only by
        an audited write (an operator's PATCH: the audit shows the invalid record replaced); the prober's
        and the intake's writes, unaudited, leave it alone (InvalidRecord): they must never un-drain a
        region or move its dial."""
        if raw is None:
            return RegionState(name=name)
        try:
            return RegionState.decode(raw)
        except ValueError as exc:
            region = None if self.topology is None else self.topology.region(name)
            if region is None or not repair:
                raise InvalidRecord(name, why_invalid(exc)) from None
            log.warning("repairing the invalid stored record of %s (an audited write)", name)
            return initial_state(region, now=time.time())

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[StateCopy | None]:
        """Hold the writers' turn (no check runs meanwhile), with the copy to update once the store
        acknowledged the write (None: the copy is not made yet)."""
        async with self._writing:
            yield self.copy

    async def check(self) -> str | None:
        """Compare the store with the copy: put the copy back if the store is behind it ("restore"); else
        refresh the copy from the store, and start a new epoch over what it holds if an edge applied a state
        newer than it ("new_epoch"); else None. Takes the writers' turn: a write acknowledged while the store
        was read would otherwise be missing from the copy until the next check."""
        async with self._writing:
            try:
                return await self._check()
            except _UNAVAILABLE as exc:
                raise _classify(exc) from exc

    async def _check(self) -> str | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(KEY_EPOCH)
            pipe.get(KEY_VERSION)
            pipe.hgetall(KEY_REGIONS)
            pipe.get(KEY_TENANTS_VERSION)
            pipe.hgetall(KEY_TENANTS)
            pipe.hgetall(KEY_API_KEYS)
            pipe.smembers(KEY_EDGES)
            epoch_raw, version_raw, raw, tenants_version, tenants, keys, edges = await pipe.execute()
        position = (int(epoch_raw or 0), int(version_raw or 0))
        self.metrics.epoch.set(position[0] / 1000)
        copy = self.copy
        have = {_text(k) for k in raw}
        lost = [n for n in (copy.regions if copy else {}) if n not in have and self._declared(n)]
        tenants_behind = copy is not None and int(tenants_version or 0) < copy.tenants_version
        if copy is not None and (position < copy.position or lost or tenants_behind):
            await self._restore(copy, found=position)
            return "restore"
        if copy is None:
            copy = self.copy = StateCopy()
        copy.epoch, copy.version = max(copy.position, position)
        copy.regions = {_text(k): _text(v) for k, v in raw.items()}
        copy.tenants_version = int(tenants_version or 0)
        copy.tenants = {_text(k): _text(v) for k, v in tenants.items()}
        copy.api_keys = {_text(k): _text(v) for k, v in keys.items()}
        await self._mirror_audit(copy)
        reports = await self.applied(sorted(_text(e) for e in edges))
        behind = went_back(position, (position[0], copy.tenants_version), reports)
        if behind is not None and await self._new_epoch(copy, behind, reports):
            return "new_epoch"
        return None

    async def _new_epoch(
        self, copy: StateCopy, behind: tuple[str, str], reports: Mapping[str, Applied]
    ) -> bool:
        """The store is behind what an edge applied, and the copy (made from the store: this control plane
        started after it went back) cannot put it right: restored from an older backup, or it lost writes
        while the control plane restarted. Every edge would refuse each later change as older until the
        store's versions passed theirs — a dial, a drain or a revocation acknowledged and not applied — so
        what the store holds starts a new epoch, which every edge takes. False: the store moved meanwhile."""
        found = copy.position
        epoch = next_epoch(time.time(), reports, after=found[0])
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(KEY_EPOCH, KEY_VERSION, KEY_TENANTS_VERSION)
            now = [int(await pipe.get(k) or 0) for k in (KEY_EPOCH, KEY_VERSION, KEY_TENANTS_VERSION)]
            if now != [*found, copy.tenants_version]:
                return False
            pipe.multi()
            pipe.set(KEY_EPOCH, epoch)
            pipe.incr(KEY_VERSION)
            pipe.incr(KEY_TENANTS_VERSION)
            pipe.xadd(
                KEY_AUDIT,
                dict[Any, Any](_new_epoch_entry(found, epoch, behind)),
                maxlen=AUDIT_MAXLEN,
                approximate=True,
            )
            pipe.publish(CHANNEL_CHANGES, change_message(version=found[1] + 1, region="*"))
            try:
                _, version, tenants_version, *_ = await pipe.execute()
            except WatchError:
                return False
        log.warning(
            "state store is behind what edge %s applied (%s; the store at epoch/version %d/%d) and the "
            "control plane had no copy to put back: restored from an older backup, or writes lost. Started "
            "epoch %d over what it holds, which every edge takes: changes made after the store's state "
            "(dials, drains, revocations) are undone (docs/runbooks.md: the state store lost its state)",
            *behind,
            *found,
            epoch,
        )
        copy.epoch, copy.version, copy.tenants_version = epoch, int(version), int(tenants_version)
        await self._mirror_audit(copy)
        self.metrics.events.labels(event="new_epoch").inc()
        self.metrics.epoch.set(epoch / 1000)
        return True

    def _declared(self, name: str) -> bool:
        return self.topology is None or self.topology.region(name) is not None

    async def _mirror_audit(self, copy: StateCopy) -> None:
        after = copy.audit[-1][0] if copy.audit else "-"
        rows: Any = await self.redis.xrange(KEY_AUDIT, min=f"({after}" if copy.audit else "-", count=1000)
        for entry_id, fields in rows:
            copy.add_audit(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})

    async def _restore(self, copy: StateCopy, *, found: tuple[int, int]) -> None:
        """The store came back empty or old: every region record, the position (one past the copy's, so
        edges take it as new) and the audit go back, with an audit entry saying so."""
        version = max(copy.version, found[1]) + 1
        log.warning(
            "state store is behind the control plane's copy (found epoch/version %s, knew %s, or regions "
            "missing): restoring",
            found,
            copy.position,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(KEY_REGIONS)
            if copy.regions:
                pipe.hset(KEY_REGIONS, mapping=dict[Any, Any](copy.regions))
            pipe.set(KEY_VERSION, version)
            pipe.set(KEY_EPOCH, copy.epoch)
            pipe.delete(KEY_TENANTS, KEY_API_KEYS)  # tenants and keys as they were, under a newer version
            if copy.tenants:
                pipe.hset(KEY_TENANTS, mapping=dict[Any, Any](copy.tenants))
            if copy.api_keys:
                pipe.hset(KEY_API_KEYS, mapping=dict[Any, Any](copy.api_keys))
            pipe.set(KEY_TENANTS_VERSION, copy.tenants_version + 1)
            pipe.delete(KEY_AUDIT)
            for entry_id, fields in copy.audit:
                pipe.xadd(KEY_AUDIT, dict[Any, Any](fields), id=entry_id)
            reason = (
                f"state store found at epoch/version {found[0]}/{found[1]} (control plane knew "
                f"{copy.epoch}/{copy.version}), empty, old or missing regions: restored its copy"
            )
            entry = AuditEntry(actor="meridian-controlplane", reason=reason, action="restore")
            fields = _audit_fields(
                entry,
                region="*",
                before={"epoch": found[0], "version": found[1]},
                after={"epoch": copy.epoch, "version": version},
            )
            pipe.xadd(KEY_AUDIT, dict[Any, Any](fields), maxlen=AUDIT_MAXLEN, approximate=True)
            pipe.publish(CHANNEL_CHANGES, change_message(version=version, region="*"))
            await pipe.execute()
        copy.version = version
        copy.tenants_version += 1
        copy.audit.clear()
        await self._mirror_audit(copy)
        self.restores += 1
        self.metrics.events.labels(event="restore").inc()

    async def append_audit(
        self, entry: AuditEntry, *, region: str, before: object = None, after: object = None
    ) -> None:
        """One audit entry for something that is not a region's state (e.g. ``pool:<region>/<model>``)."""
        fields = _audit_fields(entry, region=region, before=before, after=after)
        async with raise_unavailable():
            await self.redis.xadd(KEY_AUDIT, dict[Any, Any](fields), maxlen=AUDIT_MAXLEN, approximate=True)

    async def audit_log(self, *, limit: int = 100, region: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, of one region when given: the stream is read page by page until
        enough of that region's entries are found or it ends ("who last changed R" always has its answer)."""
        out: list[dict[str, Any]] = []
        upper = "+"
        while len(out) < limit:
            try:
                rows: Any = await self.redis.xrevrange(KEY_AUDIT, max=upper, count=max(limit, 500))
            except _UNAVAILABLE as exc:
                raise _classify(exc) from exc
            for entry_id, fields in rows:
                f = {_text(k): _text(v) for k, v in fields.items()}
                if region is None or f.get("region") == region:
                    out.append(_audit_entry(_text(entry_id), f))
                    if len(out) >= limit:
                        break
            if len(rows) < max(limit, 500):
                break  # the whole stream was read
            upper = f"({_text(rows[-1][0])}"
        return out

    async def publish_signals(self, records: Mapping[str, str]) -> None:
        """Engine signals by "region/replica" (replicated to the edges' Redis like the routing state)."""
        try:
            await self.redis.hset(KEY_SIGNALS, mapping=dict[Any, Any](records))
        except _UNAVAILABLE as exc:
            raise _classify(exc) from exc

    async def pools(self) -> dict[str, dict[str, Any]]:
        """Every autoscaled pool as the autoscaler last published it, by "region/model" (a record that is
        not JSON is left out)."""
        async with raise_unavailable():
            raw: dict[Any, Any] = await self.redis.hgetall(KEY_POOLS)
        out = {}
        for k, v in raw.items():
            try:
                out[_text(k)] = json.loads(v)
            except ValueError:
                continue
        return out

    async def observation_cursors(self, edges: Sequence[str]) -> dict[str, str]:
        """Where each edge's observation stream ends now (read from there on: what came before is old)."""
        cursors = {}
        async with raise_unavailable(), self.redis.pipeline(transaction=False) as pipe:
            for edge in edges:
                pipe.xrevrange(observations_key(edge), count=1)
            got: list[Any] = await pipe.execute()
        for edge, last in zip(edges, got, strict=True):
            cursors[edge] = _text(last[0][0]) if last else "0-0"
        return cursors

    async def observations_since(self, edges: Sequence[str], since: float) -> list[dict[str, str]]:
        """The edges' observation rows reported after unix time ``since`` (each with its ``edge``, and
        ``at``: the batch's unix time, from its stream id)."""
        async with raise_unavailable(), self.redis.pipeline(transaction=False) as pipe:
            for edge in edges:
                pipe.xrange(observations_key(edge), min=str(int(since * 1000)), count=2000)
            batches: list[Any] = await pipe.execute()
        out: list[dict[str, str]] = []
        for edge, entries in zip(edges, batches, strict=True):
            for entry_id, fields in entries:
                at = str(int(_text(entry_id).split("-")[0]) / 1000)
                out.append({_text(k): _text(v) for k, v in fields.items()} | {"edge": edge, "at": at})
        return out

    async def read_observations(
        self, cursors: dict[str, str], *, block_ms: int
    ) -> tuple[dict[str, str], list[dict[str, str]]]:
        """Read the edges' observations after their cursors (blocking up to block_ms); each row's ``edge``
        is the stream it came from (an edge's ACL user may append to its own stream only), whatever the row
        says."""
        streams: dict[Any, Any] = {observations_key(edge): last for edge, last in cursors.items()}
        resp: Any = await self.redis.xread(streams, block=block_ms, count=1000)
        cursors = dict(cursors)
        out: list[dict[str, str]] = []
        for stream, entries in resp or []:
            edge = _text(stream).removeprefix(observations_key(""))
            for entry_id, fields in entries:
                cursors[edge] = _text(entry_id)
                out.append({_text(k): _text(v) for k, v in fields.items()} | {"edge": edge})
        return cursors, out


def _audit_fields(entry: AuditEntry, *, region: str, before: object, after: object) -> dict[str, str]:
    """An audit stream entry's fields, ``before`` and ``after`` as JSON."""
    return {
        "at": f"{time.time():.3f}",
        "actor": entry.actor,
        "reason": entry.reason,
        "action": entry.action,
        "region": region,
        "before": json.dumps(before),
        "after": json.dumps(after),
    }


def _new_epoch_entry(found: tuple[int, int], epoch: int, behind: tuple[str, str]) -> dict[str, str]:
    edge, what = behind
    reason = (
        f"the store at epoch/version {found[0]}/{found[1]} is behind what edge {edge} applied ({what}): "
        "restored from an older backup or writes lost; a new epoch over what it holds, which every edge takes"
    )
    return _audit_fields(
        AuditEntry(actor="meridian-controlplane", reason=reason, action="new-epoch"),
        region="*",
        before={"epoch": found[0], "version": found[1]},
        after={"epoch": epoch, "version": found[1] + 1},
    )


def _audit_entry(entry_id: str, f: dict[str, str]) -> dict[str, Any]:
    return {
        "id": entry_id,
        "at": float(f["at"]),
        "actor": f["actor"],
        "reason": f["reason"],
        "action": f["action"],
        "region": f["region"],
        "before": json.loads(f["before"]),
        "after": json.loads(f["after"]),
    }


def _creator(region: Region, *, now: float) -> Mutation:
    def create(_: RegionState) -> RegionState:
        return initial_state(region, now=now)

    return create


def is_unavailable(exc: BaseException) -> bool:
    """``exc`` says the store cannot take writes now (down, busy, behind, read-only or refusing): a 503."""
    return (
        isinstance(exc, (*_UNAVAILABLE, StoreUnavailable, StoreBehind))
        or (isinstance(exc, RedisError) and "READONLY" in str(exc))
        or refusal(exc) is not None
    )
