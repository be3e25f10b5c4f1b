"""Who is calling (I/O at the edge): follow the tenants and API-key digests the control plane publishes
(one read of their position — the state's epoch and the set's version — on this region's Redis replica
every ``poll_s``, a full read when it moved; the same on the primary, so a replica that answers but lost its
link to the primary cannot hold a revoked key alive), and resolve a presented key to its tenant by its HMAC
digest. A revoked key stops working on the next poll (0.5 s by default); through Redis trouble the last
good set stays, for at most ``max_age_s``: then the set is stale and the edge admits no one (fail closed: a
key revoked meanwhile must not keep working)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from edge.polling import poll
from fleet.keys import KEY_API_KEYS, KEY_EPOCH, KEY_TENANTS, KEY_TENANTS_VERSION
from fleet.tenants import Tenant, decode_keys, decode_tenants, key_digest

log = logging.getLogger("meridian.tenants")

KNOWN_KEYS = 100_000  # resolved keys remembered between reloads


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: Tenant
    key_id: str
    expires_at: float | None = None  # Unix time (None: the key never expires)


@dataclass(slots=True)
class Standing:
    """Whether a request's key still holds while its answer streams: checked per chunk at the cost of one
    comparison, looked up only when the tenants moved (a revoked key's streams end within the poll)."""

    feed: TenantsFeed
    key_id: str
    generation: int

    def revoked(self) -> bool:
        feed = self.feed
        if feed.generation == self.generation:
            return False
        self.generation = feed.generation
        return self.key_id not in feed.key_ids


class TenantsFeed:
    def __init__(
        self,
        *,
        url: str,
        poll_s: float,
        secret: bytes,
        connect: Callable[[str], aioredis.Redis],
        max_age_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        primary_url: str | None = None,
    ) -> None:
        self.url = url
        self.primary_url = primary_url  # the source of truth, followed too (None: the replica only)
        self.poll_s = poll_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.confirmed_at: float | None = None  # when the set was last confirmed against the replica
        self.secret = secret
        self._connect = connect
        self.by_digest: dict[str, Principal] = {}
        self.tenants: dict[str, Tenant] = {}
        # (epoch, version) of the set held: a store re-initialised after it lost its state starts a new epoch,
        # and its set (empty, or what the operators issued since) is newer than any of the old epoch's
        self.position: tuple[int, int] | None = None
        self.generation = 0  # sets loaded here: a standing key is looked up again only when it moved
        self.key_ids: frozenset[str] = frozenset()  # the keys that hold now
        self._known: dict[str, Principal] = {}
        self.loaded = asyncio.Event()

    def resolve(self, presented: str) -> Principal | None:
        """The holder of a presented key (None: unknown or revoked). The lookup is by HMAC digest, so its
        timing tells nothing about any stored key; keys that resolved are remembered until the set changes
        (in memory only, bounded), so a client's key costs one HMAC per reload, not one per request."""
        hit = self._known.get(presented)
        if hit is not None:
            return hit
        found = self.by_digest.get(key_digest(self.secret, presented))
        if found is not None and len(self._known) < KNOWN_KEYS:
            self._known[presented] = found
        return found

    def stale_for(self) -> float | None:
        """Seconds the key set has gone unconfirmed beyond ``max_age_s`` (None: fresh enough)."""
        if self.confirmed_at is None:
            return None  # never loaded: /readyz says so, and no key resolves
        age = self.clock() - self.confirmed_at
        return age if age > self.max_age_s else None

    async def load(self, client: aioredis.Redis) -> None:
        """Follow one store (the replica or the primary): confirm the set when the store holds no newer
        version, read it whole when it does. Both stores are followed at once: a read that finds a version
        no newer than the one held (the other store got there first) changes nothing."""
        asked = self.clock()
        position = _position(*await client.mget(KEY_EPOCH, KEY_TENANTS_VERSION))
        if self.position is not None and position <= self.position:
            self.confirmed_at = max(asked, self.confirmed_at or asked)
            return  # unchanged, or a store that came back empty or old: the last good set stays
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(KEY_EPOCH)
            pipe.get(KEY_TENANTS_VERSION)
            pipe.hgetall(KEY_TENANTS)
            pipe.hgetall(KEY_API_KEYS)
            raw_epoch, raw_version, raw_tenants, raw_keys = await pipe.execute()
        position = _position(raw_epoch, raw_version)
        if self.position is not None and position <= self.position:
            return  # the other store's newer set landed while this one was read
        tenants = decode_tenants(raw_tenants)
        self.by_digest = {
            digest: Principal(tenants[key.tenant], key.id, key.expires_at)
            for digest, key in decode_keys(raw_keys).items()
            if key.tenant in tenants
        }
        self.tenants = tenants
        self.key_ids = frozenset(p.key_id for p in self.by_digest.values())
        self._known = {}  # a revoked key must not be remembered past the reload that dropped it
        self.position = position
        self.generation += 1
        self.confirmed_at = max(asked, self.confirmed_at or asked)
        self.loaded.set()

    async def run(self) -> None:
        stores = [(self.url, "tenants and keys")]
        if self.primary_url is not None and self.primary_url != self.url:
            stores.append((self.primary_url, "tenants and keys on the primary"))
        await asyncio.gather(
            *(
                poll(url=url, connect=self._connect, interval_s=self.poll_s, step=self.load, what=what)
                for url, what in stores
            )
        )


def _position(epoch: bytes | str | None, version: bytes | str | None) -> tuple[int, int]:
    """A key set's place in the store's history (a store with no state: (0, 0), older than any)."""
    return int(epoch or 0), int(version or 0)
