"""The admin API's tenants and API keys (Litestar handlers): operators write, viewers read; every change is
audited; a key's secret is in the answer to its creation and nowhere else."""

from __future__ import annotations

from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from controlplane.auth import User, operator_guard
from controlplane.schemas import (
    AUTHENTICATED,
    NEW_TENANT,
    ONE_TENANT,
    WRITE_TENANT,
    IssuedKey,
    KeyList,
    TenantCreate,
    TenantList,
    TenantPatch,
)
from controlplane.store import AuditEntry
from controlplane.tenants import KeyNotFound, KeySecretMissing, TenantNotFound, TenantStore
from fleet.state import Topology
from fleet.tenants import Tenant


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


class TenantController(Controller):
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
        return await _tenants(state).create(fields, audit)

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
                "nothing to change: give name, limits, priority and/or models",
                extra=[{"key": k, "source": "body"} for k in ("name", "limits", "priority", "models")],
            )
        _check_models(state, data.models)
        if "limits" in changes:
            changes["limits"] = data.limits.model_dump() if data.limits is not None else {}
        action = "update tenant: " + ", ".join(sorted(changes))
        audit = AuditEntry(actor=request.user.name, reason=data.reason, action=action)
        try:
            _, after = await _tenants(state).update(tenant_id, changes, audit)
        except TenantNotFound:
            raise NotFoundException(f"unknown tenant '{tenant_id}'") from None
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
        summary="Issue an API key (its secret is shown once)",
        status_code=201,
        responses={**ONE_TENANT, 403: WRITE_TENANT[403]},
    )
    async def issue_key(self, tenant_id: str, request: Request[User, str, State], state: State) -> IssuedKey:
        audit = AuditEntry(actor=request.user.name, reason="", action="issue key")
        try:
            key, secret = await _tenants(state).issue_key(tenant_id, audit)
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
