"""The admin API's bodies as its OpenAPI schema documents them: requests, answers and every error status."""

from __future__ import annotations

from typing import Any, Literal

from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Reference, Schema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controlplane.switch import SwitchRun
from fleet.state import RegionState, StoreStanding
from fleet.tenants import ApiKey, Budget, Limits, Priority, Tenant

TENANT_CHANGES = ("name", "limits", "priority", "max_priority", "models", "budget")


class DrainRequest(BaseModel):
    """A drain over a countdown: the dial steps down to 0 over ``over_s``, then the region is drained."""

    model_config = ConfigDict(strict=True, extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="why; recorded with every step")
    over_s: float = Field(ge=1, le=86_400, description="the countdown, seconds (e.g. 60)")


class RunList(BaseModel):
    runs: list[SwitchRun] = Field(description="newest first")


class RegionPatch(BaseModel):
    """A change to one region: set its dial and/or drain it (at least one). `reason` goes to the audit log."""

    model_config = ConfigDict(strict=True, extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="why; recorded in the audit log")
    weight: int | None = Field(default=None, ge=0, le=100, description="traffic dial, 0-100")
    drained: bool | None = Field(default=None, description="true: no new traffic")

    @field_validator("weight", "drained", mode="before")
    @classmethod
    def _given_means_a_value(cls, v: object) -> object:
        if v is None:  # only an explicit null gets here: leaving the field out is how to keep it
            raise ValueError("must not be null: leave the field out to keep its value")
        if isinstance(v, float) and v.is_integer():  # JSON Schema's integer: 95.0 is 95
            return int(v)
        return v


class InvalidRegion(BaseModel):
    """A region whose stored record does not decode: listed as such, never hiding the others."""

    name: str
    invalid: str = Field(description="why the stored record is refused")
    repair: str = Field(description="the call that writes a valid record")


class RegionList(BaseModel):
    version: int = Field(description="the store's version: it grows with every change")
    regions: list[RegionState | InvalidRegion]


class EdgeStanding(BaseModel):
    edge: str
    snapshot: tuple[int, int] = Field(description="(epoch, version) of the snapshot it routes on")
    keys: tuple[int, int] | None = Field(description="(epoch, version) of its key set; null: API keys off")
    applied_at: float = Field(description="unix time it applied that snapshot")
    reported_at: float | None = Field(description="unix time of its latest report, on its clock")
    silent: bool = Field(description="no report for 10 s: the edge is down or cut off from the primary")
    standing: StoreStanding = Field(
        description="current: it applied what the store holds; behind: not yet (its replica lags, or it is "
        "cut off); ahead: the store went back (restored or lost writes: the control plane starts a new epoch)"
    )


class StoreStatus(BaseModel):
    """The state store's position, and what each edge reports it applied (every observation interval)."""

    epoch: int = Field(description="the store's epoch: milliseconds since 1970 when its state began")
    version: int = Field(description="the store's version: it grows with every change")
    keys_version: int = Field(description="the key set's version: it grows with every tenant or key change")
    edges: list[EdgeStanding]
    unreported: list[str] = Field(description="edges of regions.yaml that have reported nothing")


class RegionChange(BaseModel):
    before: RegionState
    after: RegionState


class AuditRecord(BaseModel):
    id: str = Field(description="the audit stream's entry id (time-ordered)")
    at: float = Field(description="unix time")
    actor: str
    reason: str
    action: str
    region: str = Field(description="a region's name, or * for the whole store")
    before: Any = None
    after: Any = None


class AuditPage(BaseModel):
    entries: list[AuditRecord] = Field(description="newest first")


class ErrorBody(BaseModel):
    """Every error the admin API answers (never a traceback, never the store's address or credentials)."""

    status_code: int
    detail: str
    fields: list[str] | None = Field(default=None, description="the request fields at fault")
    errors: list[dict[str, Any]] | None = None
    extra: Any = None


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


AUTHENTICATED = {
    401: _error("missing or unknown bearer token"),
    503: _error("the state store cannot answer now (busy, being restored, or its primary down); Retry-After"),
}
STAFF = {**AUTHENTICATED, 403: _error("the token's role may not read this (needs viewer or operator)")}
ONE_REGION = {**AUTHENTICATED, 404: _error("unknown region")}
EXPLAIN = {
    **AUTHENTICATED,
    403: _error("the token's role may not read this (needs viewer or operator)"),
    422: _error("ip is not an IP address"),
}
CANCEL = {
    **AUTHENTICATED,
    403: _error("the token's role may not cancel requests (needs operator)"),
    404: _error("unknown edge"),
    422: _error("the request key is not one an edge gives (hex)"),
}
READ_REGION = {**ONE_REGION, 409: _error("the region's stored record is invalid: PATCH it to repair")}
WRITE_REGION = {
    **ONE_REGION,
    400: _error("the body is not JSON, or nested too deeply"),
    403: _error("the token's role may not change regions (needs operator)"),
    412: _error("If-Match names a stale version"),
    422: _error("a field is invalid, unknown or missing; `fields` names it"),
}
QUERY = {**AUTHENTICATED, 422: _error("a query parameter is invalid; `fields` names it")}


def document_rules(app: Litestar, models: list[str] | None) -> None:
    """State in the schema what the models check in code (Litestar's generator does not carry it): no
    unknown fields anywhere; a PATCH changes at least one field and sends none of them as null (but a
    tenant's ``models``, where null means every model); model names come from the catalog (``models``;
    None: the open world, any name)."""
    schemas = app.openapi_schema.components.schemas or {}
    for name in (
        "RegionPatch",
        "DrainRequest",
        "TenantCreate",
        "TenantPatch",
        "Limits",
        "LimitsPatch",
        "Budget",
        "Interruption",
    ):
        schemas[name].additional_properties = False  # extra="forbid"
    region = _properties(schemas["RegionPatch"])
    region["weight"] = Schema(
        type=OpenAPIType.INTEGER, minimum=0, maximum=100, description="traffic dial, 0-100"
    )
    region["drained"] = Schema(type=OpenAPIType.BOOLEAN, description="true: no new traffic")
    schemas["RegionPatch"].any_of = [Schema(required=["weight"]), Schema(required=["drained"])]
    tenant = _properties(schemas["TenantPatch"])
    tenant["name"] = Schema(type=OpenAPIType.STRING, min_length=1, max_length=200)
    tenant["limits"] = Reference(ref="#/components/schemas/LimitsPatch")
    tenant["priority"] = Schema(type=OpenAPIType.STRING, enum=["critical", "normal", "batch"])
    changes = TENANT_CHANGES
    schemas["TenantPatch"].any_of = [Schema(required=[k]) for k in changes]
    if models is not None:
        names = Schema(type=OpenAPIType.STRING, enum=list(models))
        listed = Schema(one_of=[Schema(type=OpenAPIType.ARRAY, items=names), Schema(type=OpenAPIType.NULL)])
        for body in ("TenantCreate", "TenantPatch"):
            _properties(schemas[body])["models"] = listed


def _properties(schema: Schema) -> dict[str, Schema | Reference]:
    if schema.properties is None:
        raise RuntimeError(f"{schema.title} has no properties in the admin API's OpenAPI schema")
    return schema.properties


class TenantCreate(BaseModel):
    """A new tenant: its limits across every edge, default (and highest) priority, and models it may use."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    limits: Limits = Field(default_factory=Limits)
    priority: Priority = "normal"
    max_priority: Priority | None = Field(default=None, description="the highest a request may ask for")
    models: list[str] | None = Field(default=None, description="null: every model")
    budget: Budget | None = Field(default=None, description="spend per period; null: none")
    reason: str = Field(default="", max_length=500, description="recorded in the audit log")


class LimitsPatch(BaseModel):
    """A change to a tenant's limits: the fields given change, ``null`` clears one (unlimited; ``burst_s``:
    back to its default), the rest are kept."""

    model_config = ConfigDict(strict=True, extra="forbid")

    rpm: int | None = Field(default=None, ge=1, le=100_000_000)
    tpm: int | None = Field(default=None, ge=1, le=10_000_000_000)
    max_concurrent: int | None = Field(default=None, ge=1, le=1_000_000)
    burst_s: float | None = Field(default=None, gt=0, le=60)

    @field_validator("rpm", "tpm", "max_concurrent", mode="before")
    @classmethod
    def _integral(cls, v: object) -> object:
        return int(v) if isinstance(v, float) and v.is_integer() else v  # JSON Schema's integer: 5.0 is 5

    def given(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.model_fields_set}
        if "burst_s" in out and out["burst_s"] is None:
            out["burst_s"] = Limits.model_fields["burst_s"].default
        return out


class TenantPatch(BaseModel):
    """A change to a tenant: the fields given (limits field by field: ``null`` clears one)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    limits: LimitsPatch | None = None
    priority: Priority | None = None
    max_priority: Priority | None = Field(default=None, description="null: the tenant's default priority")
    models: list[str] | None = Field(default=None, description="null: every model")
    budget: Budget | None = Field(default=None, description="the whole budget; null: none")
    reason: str = Field(default="", max_length=500)

    @field_validator("name", "limits", "priority", mode="before")
    @classmethod
    def _given_means_a_value(cls, v: object) -> object:
        if v is None:  # only an explicit null gets here: leaving the field out is how to keep it
            raise ValueError("must not be null: leave the field out to keep its value")
        return v

    def changes(self) -> dict[str, Any]:
        """The fields sent (an explicit ``models: null`` is a change: every model; ``budget: null``: none)."""
        return {k: getattr(self, k) for k in self.model_fields_set - {"reason"}}


class TenantList(BaseModel):
    tenants: list[Tenant]


class KeyTerms(BaseModel):
    """What a new key may carry (the body of POST .../keys is optional)."""

    model_config = ConfigDict(extra="forbid")

    expires_at: str | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"format": "date-time"},
        description="ISO 8601 with a zone; after it every edge refuses the key (401, expired)",
    )


class IssuedKey(BaseModel):
    id: str
    tenant: str
    prefix: str
    key: str = Field(description="the secret: shown this once, stored only as an HMAC digest")
    created_at: float
    expires_at: float | None = Field(default=None, description="Unix time it expires (null: never)")


class KeyList(BaseModel):
    keys: list[ApiKey] = Field(description="ids and prefixes only")


class UsageRecord(BaseModel):
    """One tenant's use of one model in one region during one hour."""

    hour: str = Field(description="the hour's start, UTC (ISO 8601)")
    model: str
    region: str = Field(description='the region that answered ("none": no region did)')
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int = Field(description="answers with status 400 or above")
    spend_usd: float = Field(description="at the catalog's prices when they were served")


class UsageTotals(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    spend_usd: float = 0.0


class DailySpend(BaseModel):
    """One tenant's spend on one model during one UTC day (the hours of the report in it)."""

    day: str = Field(description="YYYY-MM-DD, UTC")
    model: str
    requests: int
    spend_usd: float


class BudgetStanding(BaseModel):
    """The tenant's budget in its current period."""

    usd: float
    period: str
    period_ends: str = Field(description="when it renews (UTC, ISO 8601)")
    spent_usd: float
    held_usd: float = Field(description="reserved by requests in flight")
    left_usd: float


class UsageReport(BaseModel):
    tenant: str
    start: str = Field(description="the first hour included (UTC): ``from`` rounded down to its hour")
    end: str = Field(description="``to`` (UTC, exclusive)")
    rows: list[UsageRecord] = Field(description="by hour, then model, then region")
    totals: UsageTotals
    daily: list[DailySpend] = Field(default_factory=list, description="spend by day, then model")
    budget: BudgetStanding | None = Field(default=None, description="null: the tenant has no budget")


class TenantUse(BaseModel):
    """One tenant's totals over a span, as ranked by GET /v1/usage/top."""

    tenant: str
    name: str
    totals: UsageTotals


class TopUsage(BaseModel):
    start: str = Field(description="the first hour included (UTC)")
    end: str = Field(description="``to`` (UTC, exclusive)")
    by: Literal["tokens", "requests", "spend"]
    tenants: list[TenantUse] = Field(
        description="most first; tenants with no use in the span, and deleted ones, left out"
    )


class PoolTarget(BaseModel):
    metric: str
    value: float


class PoolStatus(BaseModel):
    """One autoscaled pool: replicas on and asked for, their capacity mix and cost, and the last decision."""

    region: str
    model: str
    current: int = Field(description="replicas switched on")
    desired: int = Field(description="what the last decision asked for (KEDA's metrics-api reads this)")
    min: int
    max: int
    on_demand: int
    spot: int
    cost_per_hour: float
    load: float | None = Field(description="smoothed load in the target's units, summed over the pool")
    absorbed: float = Field(
        default=0.0, description="load taken on for drained or down regions of the same model (same units)"
    )
    target: PoolTarget
    reason: str = Field(description="why the last decision was what it was")
    panic: bool
    cost_capped: bool = Field(description="a cost ceiling held the pool below what its load needs")
    replicas: dict[str, str] = Field(description="replica -> capacity type (on_demand, spot)")
    at: float


class PoolList(BaseModel):
    pools: list[PoolStatus]


class Interruption(BaseModel):
    """A notice that a replica's machine goes away (a spot interruption's two-minute warning)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    replica: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=500)
    force: bool = Field(default=False, description="give back an on-demand machine too")


CONFLICT = _error("the replica is off, or runs on demand and the notice is not forced")
ONE_POOL = {**AUTHENTICATED, 404: _error("unknown pool (region and model), or no autoscaler running")}

ONE_TENANT = {**AUTHENTICATED, 404: _error("unknown tenant (or key)")}
WRITE_TENANT = {
    **ONE_TENANT,
    400: _error("the body is not JSON, or nested too deeply"),
    403: _error("the token's role may not change tenants (needs operator)"),
    409: _error("another tenant has that name"),
    422: _error("a field is invalid, unknown or missing; `fields` names it"),
}
NEW_TENANT = {k: v for k, v in WRITE_TENANT.items() if k != 404}
