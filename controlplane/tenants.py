"""Tenants and API keys in the store (I/O): create, change and delete tenants, issue and revoke keys. Each
write is one Redis transaction that changes the record, raises the tenants' version (edges reload on it)
and appends to the audit stream (``region`` is ``tenant:<id>``). A key's secret is returned once, when
issued; the store keeps only its HMAC digest."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from controlplane.store import AUDIT_MAXLEN, AuditEntry, StateCopy, StateStore, raise_unavailable
from fleet.keys import (
    KEY_API_KEYS,
    KEY_AUDIT,
    KEY_EDGES,
    KEY_TENANTS,
    KEY_TENANTS_VERSION,
    budget_key,
    usage_key,
)
from fleet.spend import Window, window
from fleet.tenants import KEY_PREFIX_LEN, ApiKey, Tenant, decode_keys, decode_tenants, key_digest
from fleet.usage import UsageRow, decode_hour, edges_to_read, merge_edges


class TenantNotFound(Exception):
    pass


class KeyNotFound(Exception):
    pass


class TenantNameTaken(Exception):
    """Another tenant has this name (names are unique, compared without case)."""


log = logging.getLogger("meridian.tenants")


class TenantStore:
    def __init__(
        self, redis: aioredis.Redis, *, secret: bytes | None, state: StateStore | None = None
    ) -> None:
        self.redis = redis
        self.secret = secret  # None: keys cannot be issued (MERIDIAN_KEY_SECRET unset)
        self.state = state  # its copy of the store follows every write here before the API answers

    def _turn(self) -> contextlib.AbstractAsyncContextManager[StateCopy | None]:
        return self.state.writing() if self.state is not None else contextlib.nullcontext(None)

    async def tenants(self) -> list[Tenant]:
        async with raise_unavailable():
            raw: Any = await self.redis.hgetall(KEY_TENANTS)
        return sorted(decode_tenants(raw).values(), key=lambda t: t.created_at)

    async def tenant(self, tenant_id: str) -> Tenant:
        async with raise_unavailable():
            raw = await self.redis.hget(KEY_TENANTS, tenant_id)
        if raw is None:
            raise TenantNotFound(tenant_id)
        return Tenant.model_validate_json(raw)

    async def create(self, fields: dict[str, Any], audit: AuditEntry) -> Tenant:
        tenant = Tenant.model_validate(
            {**fields, "id": f"t-{secrets.token_hex(6)}", "created_at": time.time()}
        )
        await self._change(tenant.id, lambda _: tenant, audit, name=tenant.name)
        return tenant

    async def update(
        self, tenant_id: str, changes: dict[str, Any], audit: AuditEntry
    ) -> tuple[Tenant, Tenant]:
        found: list[Tenant] = []

        def change(before: Tenant | None) -> Tenant:
            if before is None:
                raise TenantNotFound(tenant_id)
            found.append(before)
            fields = {**before.model_dump(), **changes}
            if "limits" in changes:  # the limits given change, the others are kept
                fields["limits"] = {**before.limits.model_dump(), **changes["limits"]}
            return Tenant.model_validate(fields)

        after = await self._change(tenant_id, change, audit, name=changes.get("name"))
        assert after is not None
        return found[-1], after

    async def delete(self, tenant_id: str, audit: AuditEntry) -> None:
        """The tenant and every key it holds (revoked at once on every edge)."""

        def gone(before: Tenant | None) -> None:
            if before is None:
                raise TenantNotFound(tenant_id)

        await self._change(tenant_id, gone, audit, drop_keys=True)

    async def issue_key(
        self, tenant_id: str, audit: AuditEntry, expires_at: float | None = None
    ) -> tuple[ApiKey, str]:
        if self.secret is None:
            raise KeySecretMissing()
        await self.tenant(tenant_id)
        secret_key = f"mk-{secrets.token_urlsafe(32)}"
        key = ApiKey(
            id=f"k-{secrets.token_hex(6)}",
            tenant=tenant_id,
            prefix=secret_key[:KEY_PREFIX_LEN],
            created_at=time.time(),
            expires_at=expires_at,
        )
        digest, record = key_digest(self.secret, secret_key), key.model_dump_json()
        entry = _entry(tenant_id, audit, None, key.model_dump())
        async with self._turn() as copy, raise_unavailable(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(KEY_API_KEYS, digest, record)
            pipe.incr(KEY_TENANTS_VERSION)
            pipe.xadd(KEY_AUDIT, entry, maxlen=AUDIT_MAXLEN, approximate=True)
            done = await pipe.execute()
            if copy is not None:
                copy.tenants_written(
                    version=int(done[1]), tenants={}, keys={digest: record}, audit=_id(done[2], entry)
                )
        return key, secret_key

    async def keys(self, tenant_id: str) -> list[ApiKey]:
        await self.tenant(tenant_id)
        async with raise_unavailable():
            raw: Any = await self.redis.hgetall(KEY_API_KEYS)
        return sorted(
            (k for k in decode_keys(raw).values() if k.tenant == tenant_id), key=lambda k: k.created_at
        )

    async def revoke(self, tenant_id: str, key_id: str, audit: AuditEntry) -> None:
        async with raise_unavailable():
            raw: Any = await self.redis.hgetall(KEY_API_KEYS)
        match = [(d, k) for d, k in decode_keys(raw).items() if k.tenant == tenant_id and k.id == key_id]
        if not match:
            raise KeyNotFound(key_id)
        digest, key = match[0]
        entry = _entry(tenant_id, audit, key.model_dump(), None)
        async with self._turn() as copy, raise_unavailable(), self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(KEY_API_KEYS, digest)
            pipe.incr(KEY_TENANTS_VERSION)
            pipe.xadd(KEY_AUDIT, entry, maxlen=AUDIT_MAXLEN, approximate=True)
            done = await pipe.execute()
            if copy is not None:
                copy.tenants_written(
                    version=int(done[1]), tenants={}, keys={digest: None}, audit=_id(done[2], entry)
                )

    async def _change(
        self,
        tenant_id: str,
        change: Callable[[Tenant | None], Tenant | None],
        audit: AuditEntry,
        *,
        drop_keys: bool = False,
        name: str | None = None,
    ) -> Tenant | None:
        async with self._turn() as copy, raise_unavailable():
            return await self._transaction(
                tenant_id, change, audit, drop_keys=drop_keys, copy=copy, name=name
            )

    async def _transaction(
        self,
        tenant_id: str,
        change: Callable[[Tenant | None], Tenant | None],
        audit: AuditEntry,
        *,
        drop_keys: bool,
        copy: StateCopy | None,
        name: str | None = None,
    ) -> Tenant | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(KEY_TENANTS, KEY_API_KEYS)
                    raw = await pipe.hget(KEY_TENANTS, tenant_id)
                    before = None if raw is None else Tenant.model_validate_json(raw)
                    if name is not None:  # a new name: nobody else may hold it (read under the WATCH)
                        others = decode_tenants(await pipe.hgetall(KEY_TENANTS))
                        if any(
                            t.name.casefold() == name.casefold() and i != tenant_id for i, t in others.items()
                        ):
                            await pipe.reset()
                            raise TenantNameTaken(name)
                    after = change(before)
                    keys: Any = await pipe.hgetall(KEY_API_KEYS) if drop_keys else {}
                    pipe.multi()
                    # fields at their defaults are left out: an edge of the previous release (whose
                    # Limits forbid fields it does not know) still reads every tenant that uses none
                    record = None if after is None else after.model_dump_json(exclude_defaults=True)
                    if record is None:
                        pipe.hdel(KEY_TENANTS, tenant_id)
                    else:
                        pipe.hset(KEY_TENANTS, tenant_id, record)
                    held = [d for d, k in decode_keys(keys).items() if k.tenant == tenant_id]
                    if held:
                        pipe.hdel(KEY_API_KEYS, *held)
                    pipe.incr(KEY_TENANTS_VERSION)
                    entry = _entry(
                        tenant_id,
                        audit,
                        None if before is None else before.model_dump(),
                        None if after is None else after.model_dump(),
                    )
                    pipe.xadd(KEY_AUDIT, entry, maxlen=AUDIT_MAXLEN, approximate=True)
                    done = await pipe.execute()
                    if copy is not None:
                        copy.tenants_written(
                            version=int(done[-2]),
                            tenants={tenant_id: record},
                            keys=dict.fromkeys(held),
                            audit=_id(done[-1], entry),
                        )
                    return after
                except WatchError:
                    continue

    async def usage(
        self, tenant_id: str, first_hour: int, last_hour: int, *, edges: Iterable[str] = ()
    ) -> dict[int, dict[tuple[str, str], UsageRow]]:
        """The tenant's usage per hour, ``first_hour`` to ``last_hour`` inclusive (unix hours), as the edges
        wrote it: every edge's hash of each hour (``edges`` and every edge the store remembers), one
        pipelined read. A row no edge could have counted is left out and logged with its edge's name."""
        hours = range(first_hour, last_hour + 1)
        async with raise_unavailable():
            remembered: Any = await self.redis.smembers(KEY_EDGES)
        names = edges_to_read(edges, remembered)
        async with raise_unavailable(), self.redis.pipeline(transaction=False) as pipe:
            for hour in hours:
                for edge in names:
                    pipe.hgetall(usage_key(edge, tenant_id, hour))
            raw: list[Any] = await pipe.execute()
        out = {}
        for i, hour in enumerate(hours):
            got = raw[i * len(names) : (i + 1) * len(names)]
            per_edge = {edge or "-": decode_hour(h) for edge, h in zip(names, got, strict=True)}
            rows, forged = merge_edges(per_edge)
            for edge in sorted(set(forged)):
                log.warning(
                    "tenant %s, hour %d: edge %s's usage left out (no edge counts so much)",
                    tenant_id,
                    hour,
                    edge,
                )
            if rows:
                out[hour] = rows
        return out

    async def budget_standing(self, tenant: Tenant, now: float) -> tuple[Window, int, int] | None:
        """The tenant's current budget period: its window, what is spent and what live requests hold
        reserved (nano-USD; None: no budget)."""
        if tenant.budget is None:
            return None
        w = window(tenant.budget.period, now)
        async with raise_unavailable():
            raw: dict[Any, Any] = await self.redis.hgetall(budget_key(tenant.id, w.id))
        spent = held = 0
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            if name == "spent":
                spent = int(v)
            elif name.startswith("r:"):
                held += max(0, int(v))
        return w, spent, held


class KeySecretMissing(Exception):
    """MERIDIAN_KEY_SECRET is not set: no key can be issued."""


def _id(entry_id: str | bytes, entry: dict[Any, Any]) -> tuple[str, dict[str, str]]:
    return (entry_id.decode() if isinstance(entry_id, bytes) else entry_id), entry


def _entry(tenant_id: str, audit: AuditEntry, before: object, after: object) -> dict[Any, Any]:
    return {
        "at": f"{time.time():.3f}",
        "actor": audit.actor,
        "reason": audit.reason,
        "action": audit.action,
        "region": f"tenant:{tenant_id}",
        "before": json.dumps(before),
        "after": json.dumps(after),
    }
