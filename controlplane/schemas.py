"""The admin API's bodies as its OpenAPI schema documents them: requests, answers and every error status."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.state import RegionState


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
ONE_REGION = {**AUTHENTICATED, 404: _error("unknown region")}
READ_REGION = {**ONE_REGION, 409: _error("the region's stored record is invalid: PATCH it to repair")}
WRITE_REGION = {
    **ONE_REGION,
    400: _error("the body is not JSON, or nested too deeply"),
    403: _error("the token's role may not change regions (needs operator)"),
    412: _error("If-Match names a stale version"),
    422: _error("a field is invalid, unknown or missing; `fields` names it"),
}
QUERY = {**AUTHENTICATED, 422: _error("a query parameter is invalid; `fields` names it")}


def document_patch_rule(app: Litestar) -> None:
    """State in the schema what the model checks in code: weight or drained (or both), neither null."""
    components = app.openapi_schema.components
    schema = (components.schemas or {}).get("RegionPatch")
    if schema is None or schema.properties is None:
        raise RuntimeError("RegionPatch is missing from the admin API's OpenAPI schema")
    schema.properties["weight"] = Schema(
        type=OpenAPIType.INTEGER, minimum=0, maximum=100, description="traffic dial, 0-100"
    )
    schema.properties["drained"] = Schema(type=OpenAPIType.BOOLEAN, description="true: no new traffic")
    schema.any_of = [Schema(required=["weight"]), Schema(required=["drained"])]
    schema.additional_properties = False  # extra="forbid"
