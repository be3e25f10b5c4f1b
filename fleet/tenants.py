"""Tenants and their API keys as the store holds them (pure, no I/O): the control plane writes them, every
edge reads them from its regional replica. A key's secret is never stored: only its HMAC-SHA256 digest
under a server-side secret (``MERIDIAN_KEY_SECRET``, the same on the control plane and every edge), so a
copy of the store does not give anyone a usable key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.spend import Period

KEY_PREFIX_LEN = 8  # characters of a key shown in listings ("mk-Ab3dE…"): enough to tell keys apart

Priority = Literal["critical", "normal", "batch"]  # the one priority: tenants, requests, the queue's bands
PRIORITIES: tuple[Priority, ...] = (
    "critical",
    "normal",
    "batch",
)  # highest first: the order bands are served
PRIORITY_RANK: dict[str, int] = {p: len(PRIORITIES) - 1 - i for i, p in enumerate(PRIORITIES)}


class Limits(BaseModel):
    """Per-tenant limits across every edge (None: unlimited)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rpm: int | None = Field(default=None, ge=1, le=100_000_000, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, le=10_000_000_000, description="tokens per minute")
    max_concurrent: int | None = Field(default=None, ge=1, le=1_000_000, description="requests in flight")
    burst_s: float = Field(
        default=1.0, gt=0, le=60, description="seconds of the rpm/tpm rate that may arrive at once"
    )

    @field_validator("rpm", "tpm", "max_concurrent", mode="before")
    @classmethod
    def _integral(cls, v: object) -> object:
        return int(v) if isinstance(v, float) and v.is_integer() else v  # JSON Schema's integer: 5.0 is 5


class Budget(BaseModel):
    """What a tenant may spend per period at the catalog's prices, across every edge."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    usd: float = Field(gt=0, le=1_000_000, description="US dollars per period")
    period: Period = Field(default="month", description="a UTC day or calendar month")

    @field_validator("usd", mode="before")
    @classmethod
    def _number(cls, v: object) -> object:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v  # JSON's 5 is 5.0


class Tenant(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    name: str = Field(min_length=1, max_length=200)
    limits: Limits = Field(default_factory=Limits)
    priority: Priority = Field(default="normal", description="its requests' priority by default")
    max_priority: Priority | None = Field(
        default=None,
        description="the highest X-Meridian-Priority may ask for (None or below its default: its default)",
    )
    models: tuple[str, ...] | None = Field(default=None, description="models it may use (None: all)")
    budget: Budget | None = Field(default=None, description="spend per period (None: no budget)")
    created_at: float = 0.0

    def may_use(self, model: str | None) -> bool:
        return self.models is None or model is None or model in self.models

    @property
    def ceiling(self) -> Priority:
        """The highest priority its requests may ask for."""
        if self.max_priority is None or PRIORITY_RANK[self.max_priority] < PRIORITY_RANK[self.priority]:
            return self.priority
        return self.max_priority

    def priority_for(self, asked: Priority | None) -> Priority:
        """The request's priority: what it asked for, capped by its ceiling; else its default."""
        if asked is None:
            return self.priority
        ceiling = self.ceiling
        return ceiling if PRIORITY_RANK[asked] > PRIORITY_RANK[ceiling] else asked


class ApiKey(BaseModel):
    """One issued key, as listed: never its secret."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    tenant: str
    prefix: str
    created_at: float = 0.0
    expires_at: float | None = None  # Unix time after which every edge refuses it (None: never)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def key_digest(secret: bytes, key: str) -> str:
    """The stored form of a key: HMAC-SHA256 under the server-side secret."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def decode_tenants(raw: Mapping[str | bytes, str | bytes]) -> dict[str, Tenant]:
    out: dict[str, Tenant] = {}
    for value in raw.values():
        try:
            t = Tenant.model_validate_json(value)
        except ValueError:
            continue  # a record that does not decode grants nothing
        out[t.id] = t
    return out


def decode_keys(raw: Mapping[str | bytes, str | bytes]) -> dict[str, ApiKey]:
    """Digest -> key record."""
    out: dict[str, ApiKey] = {}
    for digest, value in raw.items():
        try:
            out[digest.decode() if isinstance(digest, bytes) else digest] = ApiKey.model_validate_json(value)
        except ValueError:
            continue
    return out
