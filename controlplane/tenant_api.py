"""The admin API's tenants and API keys (Litestar handlers): operators write, viewers read; every change is
audited; a key's secret is in the answer to its creation and nowhere else."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi.spec import Operation, RequestBody
from litestar.params import Parameter

from controlplane.auth import User, operator_guard, staff_guard
from controlplane.schemas import (
    AUTHENTICATED,
    NEW_TENANT,
    ONE_TENANT,
    TENANT_CHANGES,
    WRITE_TENANT,
    BudgetStanding,
    DailySpend,
    IssuedKey,
    KeyList,
    KeyTerms,
    TenantCreate,
    TenantList,
    TenantPatch,
    TenantUse,
    TopUsage,
    UsageRecord,
    UsageReport,
    UsageTotals,
)
from controlplane.store import AuditEntry
from controlplane.tenants import KeyNotFound, KeySecretMissing, TenantNameTaken, TenantNotFound, TenantStore
from fleet.models import usd
from fleet.state import Topology
from fleet.tenants import Tenant
from fleet.usage import COUNTERS, UsageRow, hour_of

USAGE_YEARS = (2000, 2200)  # the range a usage query may name
MAX_USAGE_SPAN = timedelta(days=31)  # one query reads at most this many hours' hashes (744)


def _tenants(state: State) -> TenantStore:
    store: TenantStore = state.tenants
    return store


def _check_models(state: State, models: list[str] | None) -> None:
    topo: Topology = state.topology
    unknown = [m for m in models or () if not topo.catalog.known(m)]
    if unknown:
        raise ValidationException(
            f"models: {', '.join(map(repr, unknown))} not in regions.yaml's catalog",
            extra=[{"key": "models", "source": "body"}],
        )


@dataclass
class OptionalBody(Operation):
    """An operation whose request body may be left out (OpenAPI's ``requestBody.required: false``)."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


class TenantController(Controller):
    guards = [staff_guard]
    path = "/v1/tenants"
    tags = ["tenants"]

    @get("/", summary="Every tenant", responses=AUTHENTICATED)
    async def list_tenants(self, state: State) -> TenantList:
        return TenantList(tenants=await _tenants(state).tenants())

    @post("/", guards=[operator_guard], summary="Create a tenant", status_code=201, responses=NEW_TENANT)
    async def create_tenant(
        self, data: TenantCreate, request: Request[User, str, State], state: State
    ) -> Tenant:
        _check_models(state, data.models)
        fields = data.model_dump(exclude={"reason"})
        audit = AuditEntry(actor=request.user.name, reason=data.reason, action=f"create tenant {data.name!r}")
        try:
            return await _tenants(state).create(fields, audit)
        except TenantNameTaken:
            raise _name_taken(data.name) from None

    @get("/{tenant_id:str}", summary="One tenant", responses=ONE_TENANT)
    async def get_tenant(self, tenant_id: str, state: State) -> Tenant:
        try:
            return await _tenants(state).tenant(tenant_id)
        except TenantNotFound:
            raise NotFoundException(f"unknown tenant '{tenant_id}'") from None

    @patch("/{tenant_id:str}", guards=[operator_guard], summary="Change a tenant", responses=WRITE_TENANT)
    async def patch_tenant(
        self, tenant_id: str, data: TenantPatch, request: Request[User, str, State], state: State
    ) -> Tenant:
        changes = data.changes()
        if not changes:
            raise ValidationException(
                "nothing to change: give " + ", ".join(TENANT_CHANGES[:-1]) + f" and/or {TENANT_CHANGES[-1]}",
                extra=[{"key": k, "source": "body"} for k in TENANT_CHANGES],
            )
        _check_models(state, data.models)
        if data.limits is not None:
            changes["limits"] = data.limits.given()  # merged field by field with the tenant's
        action = "update tenant: " + ", ".join(sorted(changes))
        audit = AuditEntry(actor=request.user.name, reason=data.reason, action=action)
        try:
            _, after = await _tenants(state).update(tenant_id, changes, audit)
        except TenantNotFound:
            raise NotFoundException(f"unknown tenant '{tenant_id}'") from None
        except TenantNameTaken:
            raise _name_taken(str(changes["name"])) from None
        return after

    @delete(
        "/{tenant_id:str}",
        guards=[operator_guard],
        summary="Delete a tenant and its keys",
        responses=ONE_TENANT,
    )
    async def delete_tenant(self, tenant_id: str, request: Request[User, str, State], state: State) -> None:
        audit = AuditEntry(actor=request.user.name, reason="", action="delete tenant and its keys")
        try:
            await _tenants(state).delete(tenant_id, audit)
        except TenantNotFound:
            raise NotFoundException(f"unknown tenant '{tenant_id}'") from None

    @post(
        "/{tenant_id:str}/keys",
        guards=[operator_guard],
        summary="Issue an API key (its secret is shown once); the body, with its expiry, is optional",
        status_code=201,
        responses={**ONE_TENANT, 403: WRITE_TENANT[403], 422: WRITE_TENANT[422]},
        operation_class=OptionalBody,
    )
    async def issue_key(
        self, tenant_id: str, request: Request[User, str, State], state: State, data: KeyTerms | None = None
    ) -> IssuedKey:
        expires_at = _expiry(data.expires_at if data is not None else None)
        audit = AuditEntry(actor=request.user.name, reason="", action="issue key")
        try:
            key, secret = await _tenants(state).issue_key(tenant_id, audit, expires_at)
        except TenantNotFound:
            raise NotFoundException(f"unknown tenant '{tenant_id}'") from None
        except KeySecretMissing:
            raise HTTPException(
                "MERIDIAN_KEY_SECRET is not set on the control plane: no key can be issued", status_code=503
            ) from None
        return IssuedKey(key=secret, **key.model_dump())

    @get("/{tenant_id:str}/keys", summary="A tenant's keys: ids and prefixes", responses=ONE_TENANT)
    async def list_keys(self, tenant_id: str, state: State) -> KeyList:
        try:
            return KeyList(keys=await _tenants(state).keys(tenant_id))
        except TenantNotFound:
            raise NotFoundException(f"unknown tenant '{tenant_id}'") from None

    @delete(
        "/{tenant_id:str}/keys/{key_id:str}",
        guards=[operator_guard],
        summary="Revoke a key (every edge refuses it within a second)",
        responses={**ONE_TENANT, 403: WRITE_TENANT[403]},
    )
    async def revoke_key(
        self, tenant_id: str, key_id: str, request: Request[User, str, State], state: State
    ) -> None:
        audit = AuditEntry(actor=request.user.name, reason="", action=f"revoke key {key_id}")
        try:
            await _tenants(state).revoke(tenant_id, key_id, audit)
        except (TenantNotFound, KeyNotFound):
            raise NotFoundException(f"unknown key '{key_id}' of tenant '{tenant_id}'") from None

    @get(
        "/{tenant_id:str}/usage",
        summary="A tenant's usage per hour, model and region (requests, tokens, errors, spend), spend per "
        "day and model, and its budget's standing",
        responses={**ONE_TENANT, 422: WRITE_TENANT[422]},
    )
    async def usage(
        self,
        tenant_id: str,
        state: State,
        start: Annotated[
            str | None,
            Parameter(
                query="from",
                required=False,
                schema_extra={"format": "date-time"},
                description="ISO 8601, e.g. 2026-11-30T00:00:00Z; default: 24 hours before `to`",
            ),
        ] = None,
        end: Annotated[
            str | None,
            Parameter(
                query="to",
                required=False,
                schema_extra={"format": "date-time"},
                description="ISO 8601; default: now",
            ),
        ] = None,
    ) -> UsageReport:
        first, last, end_at = _span(start, end)
        store = _tenants(state)
        hours = await store.usage(tenant_id, first, last, edges=state.topology.names)
        try:  # 404 for a tenant that never was (a deleted tenant's usage stays for its bills)
            tenant: Tenant | None = await store.tenant(tenant_id)
        except TenantNotFound:
            if not hours:
                raise NotFoundException(f"unknown tenant '{tenant_id}'") from None
            tenant = None
        report = _report(tenant_id, hours, first, end_at.timestamp())
        if tenant is not None and tenant.budget is not None:
            standing = await store.budget_standing(tenant, time.time())
            assert standing is not None
            w, spent, held = standing
            report.budget = BudgetStanding(
                usd=tenant.budget.usd,
                period=tenant.budget.period,
                period_ends=_iso(w.ends_at),
                spent_usd=usd(spent),
                held_usd=usd(held),
                left_usd=max(0.0, tenant.budget.usd - usd(spent + held)),
            )
        return report


def _expiry(raw: str | None) -> float | None:
    """A new key's expiry as Unix time; 422 naming ``expires_at`` when it is no ISO 8601 time with a zone,
    or has passed."""
    if raw is None:
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationException(
            f"expires_at must be an ISO 8601 time, e.g. 2027-01-01T00:00:00Z (got {raw[:40]!r})",
            extra=[{"key": "expires_at", "source": "body"}],
        ) from None
    if at.tzinfo is None:
        raise ValidationException(
            "expires_at needs a zone (e.g. 2027-01-01T00:00:00Z): a time without one is not guessed",
            extra=[{"key": "expires_at", "source": "body"}],
        )
    if at.timestamp() <= time.time():
        raise ValidationException("expires_at has passed", extra=[{"key": "expires_at", "source": "body"}])
    return at.timestamp()


def _span(start: str | None, end: str | None) -> tuple[int, int, datetime]:
    """A report's ``from`` and ``to`` (default: the 24 hours to now) as its first and last hour and its
    end; 422 naming the parameter when they are not a span a report covers."""
    end_at = _when(end, "to") if end is not None else datetime.now(UTC)
    start_at = _when(start, "from") if start is not None else end_at - timedelta(hours=24)
    if start_at >= end_at:
        raise ValidationException("from must be before to", extra=[{"key": "from", "source": "query"}])
    if end_at - start_at > MAX_USAGE_SPAN:
        raise ValidationException(
            f"from..to spans more than {MAX_USAGE_SPAN.days} days: ask for less",
            extra=[{"key": "from", "source": "query"}],
        )
    return hour_of(start_at.timestamp()), hour_of(end_at.timestamp() - 1e-6), end_at


RANKED_BY: dict[str, Callable[[UsageTotals], float]] = {
    "tokens": lambda t: t.prompt_tokens + t.completion_tokens,
    "requests": lambda t: t.requests,
    "spend": lambda t: t.spend_usd,
}


@get(
    "/v1/usage/top",
    guards=[staff_guard],
    summary="The tenants using most over a span, by tokens, requests or spend",
    responses={**AUTHENTICATED, 422: WRITE_TENANT[422]},
)
async def top_usage(
    state: State,
    by: Literal["tokens", "requests", "spend"] = "tokens",
    n: Annotated[int, Parameter(ge=1, le=1000, description="how many tenants")] = 10,
    start: Annotated[
        str | None, Parameter(query="from", required=False, schema_extra={"format": "date-time"})
    ] = None,
    end: Annotated[
        str | None, Parameter(query="to", required=False, schema_extra={"format": "date-time"})
    ] = None,
) -> TopUsage:
    first, last, end_at = _span(start, end)
    store = _tenants(state)
    ranked = []
    for tenant in await store.tenants():
        hours = await store.usage(tenant.id, first, last, edges=state.topology.names)
        totals = _report(tenant.id, hours, first, end_at.timestamp()).totals
        if totals.requests:
            ranked.append(TenantUse(tenant=tenant.id, name=tenant.name, totals=totals))
    ranked.sort(key=lambda u: RANKED_BY[by](u.totals), reverse=True)
    return TopUsage(start=_iso(first * 3600), end=_iso(end_at.timestamp()), by=by, tenants=ranked[:n])


def _report(
    tenant_id: str, hours: dict[int, dict[tuple[str, str], UsageRow]], first: int, end: float
) -> UsageReport:
    """The hours' rows, their totals and the spend per day and model."""
    rows = [
        UsageRecord(
            hour=_iso(hour * 3600),
            model=model,
            region=region,
            spend_usd=usd(row.spend_nusd),
            **{k: getattr(row, k) for k in COUNTERS if k != "spend_nusd"},
        )
        for hour, by in sorted(hours.items())
        for (model, region), row in sorted(by.items())
    ]
    totals = UsageTotals()
    daily: dict[tuple[str, str], tuple[int, int]] = {}
    for hour, by in hours.items():
        day = _iso(hour * 3600)[:10]
        for (model, _), row in by.items():
            requests, spend = daily.get((day, model), (0, 0))
            daily[(day, model)] = (requests + row.requests, spend + row.spend_nusd)
            for k in ("requests", "prompt_tokens", "completion_tokens", "errors"):
                setattr(totals, k, getattr(totals, k) + getattr(row, k))
    totals.spend_usd = usd(sum(spend for _, spend in daily.values()))
    return UsageReport(
        tenant=tenant_id,
        start=_iso(first * 3600),
        end=_iso(end),
        rows=rows,
        totals=totals,
        daily=[
            DailySpend(day=day, model=model, requests=n, spend_usd=usd(spend))
            for (day, model), (n, spend) in sorted(daily.items())
        ],
    )


def _name_taken(name: str) -> HTTPException:
    return HTTPException(
        f"another tenant is named {name[:200]!r} (names are unique, without regard to case)",
        status_code=409,
        extra=[{"key": "name", "source": "body"}],
    )


def _when(raw: str, name: str) -> datetime:
    """A query's ISO 8601 time, in UTC (one without a zone is taken as UTC); else 422 naming it."""
    try:
        at = datetime.fromisoformat(raw)
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationException(
            f"{name} must be an ISO 8601 date and time, e.g. 2026-11-30T00:00:00Z (got {raw[:40]!r})",
            extra=[{"key": name, "source": "query"}],
        ) from None
    if not USAGE_YEARS[0] <= at.year <= USAGE_YEARS[1]:  # and no arithmetic near datetime's own limits
        raise ValidationException(
            f"{name} must be between the years {USAGE_YEARS[0]} and {USAGE_YEARS[1]} (got {raw[:40]!r})",
            extra=[{"key": name, "source": "query"}],
        )
    return at


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat().replace("+00:00", "Z")
