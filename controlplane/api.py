"""The admin API (Litestar): regions, dials, drains and audit behind bearer tokens with roles.

I/O lives in the lifespan (Redis client, prober and intake tasks); handlers translate store errors into
HTTP status codes: 401/403 auth, 404 unknown region, 412 stale If-Match, 422 invalid input, 503 when the
Redis primary cannot take writes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Litestar, Request, Response, get, patch, post
from litestar.datastructures import State
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ValidationException,
)
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import Parameter
from litestar.plugins.pydantic import PydanticPlugin
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from controlplane import console
from controlplane.auth import TokenAuth, User, operator_guard, staff_guard
from controlplane.pool_api import PoolController
from controlplane.runs import Runs
from controlplane.schemas import (
    AUTHENTICATED,
    QUERY,
    READ_REGION,
    WRITE_REGION,
    AuditPage,
    DrainRequest,
    EdgeStanding,
    InvalidRegion,
    RegionChange,
    RegionList,
    RegionPatch,
    RunList,
    StoreStatus,
    document_rules,
)
from controlplane.settings import ControlPlaneSettings
from controlplane.store import (
    AuditEntry,
    InvalidRecord,
    RegionNotFound,
    StateStore,
    StoreBehind,
    StoreBusy,
    StoreError,
    StoreMetrics,
    StoreRefusing,
    StoreUnavailable,
    VersionConflict,
    is_unavailable,
)
from controlplane.switch import SwitchRun
from controlplane.tenant_api import TenantController, top_usage
from controlplane.workers import Workers, open_store
from fleet.redisconn import refusal
from fleet.state import RegionState, Topology, standing
from fleet.topology import load_topology

log = logging.getLogger("meridian.api")


class PreconditionFailed(HTTPException):
    status_code = 412


class ServiceUnavailable(HTTPException):
    status_code = 503


def _store(state: State) -> StateStore:
    store: StateStore = state.store
    return store


def _etag(s: RegionState) -> dict[str, str]:
    return {"ETag": f'"{s.version}"'}


def _parse_if_match(value: str) -> int | None:
    if value.strip() == "*":
        return None
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    try:
        return int(raw)
    except ValueError:
        raise ValidationException(
            "If-Match must be a region version (an integer)", extra=[{"key": "If-Match", "source": "header"}]
        ) from None


IF_MATCH = r'^\s*(\*|(W/)?"?[0-9]{1,18}"?)\s*$'


class RegionController(Controller):
    path = "/v1/regions"
    tags = ["regions"]
    guards = [staff_guard]

    @get("/", summary="List every region's state", responses=AUTHENTICATED)
    async def list_regions(self, state: State) -> RegionList:
        version, regions, invalid = await _store(state).all()
        topo: Topology = state.topology
        ordered: list[RegionState | InvalidRegion] = []
        for n in topo.names:  # an invalid record is listed as such and never hides the others
            if n in regions:
                ordered.append(regions[n])
            elif n in invalid:
                ordered.append(InvalidRegion(name=n, invalid=invalid[n], repair=f"PATCH /v1/regions/{n}"))
        return RegionList(version=version, regions=ordered)

    @get("/{name:str}", summary="One region's state", responses=READ_REGION)
    async def get_region(self, name: str, state: State) -> Response[RegionState]:
        try:
            s = await _store(state).get(name)
        except RegionNotFound:
            raise NotFoundException(f"unknown region '{name}'") from None
        except InvalidRecord as exc:
            raise ClientException(f"{exc}; PATCH it to write a valid record", status_code=409) from None
        return Response(s, headers=_etag(s))

    @patch(
        "/{name:str}",
        guards=[operator_guard],
        summary="Change a region's dial or drain state",
        responses=WRITE_REGION,
    )
    async def patch_region(
        self,
        name: str,
        data: RegionPatch,
        request: Request[User, str, State],
        state: State,
        if_match: Annotated[
            str,
            Parameter(
                header="If-Match",
                required=False,
                schema_extra={"pattern": IF_MATCH},  # documented; _parse_if_match says what is wrong
                description='a region version, e.g. "7"; * or none: any',
            ),
        ] = "*",
    ) -> Response[RegionChange]:
        asked = time.time()
        if data.weight is None and data.drained is None:
            raise ValidationException(
                "nothing to change: give weight and/or drained",
                extra=[{"key": "weight", "source": "body"}, {"key": "drained", "source": "body"}],
            )
        expected = _parse_if_match(if_match)
        update: dict[str, Any] = {}
        if data.weight is not None:
            update["weight"] = data.weight
        if data.drained is not None:
            update["drained"] = data.drained
        action = ", ".join(f"{k}={v}" for k, v in update.items())

        def mutate(s: RegionState) -> RegionState | None:
            return s.model_copy(update=update)

        try:
            before, after = await _store(state).update(
                name,
                mutate,
                expected_version=expected,
                audit=AuditEntry(actor=request.user.name, reason=data.reason, action=action),
            )
        except RegionNotFound:
            raise NotFoundException(f"unknown region '{name}'") from None
        except VersionConflict as exc:
            raise PreconditionFailed(
                f"If-Match {expected} is stale: region '{name}' is at version {exc.current}"
            ) from None
        log.info("%s set %s on %s (%s)", request.user.name, action, name, printable(data.reason))
        await _record_switch(state, before, after, request.user.name, data.reason, asked)
        return Response(RegionChange(before=before, after=after), headers=_etag(after))

    @post(
        "/{name:str}/drain",
        guards=[operator_guard],
        summary="Drain a region over a countdown: its dial walks down to 0, then it is drained",
        status_code=202,
        responses=WRITE_REGION,
    )
    async def drain_region(
        self, name: str, data: DrainRequest, request: Request[User, str, State], state: State
    ) -> SwitchRun:
        runs: Runs = state.runs
        try:
            run = await runs.drain(name, data.over_s, request.user.name, data.reason)
        except RegionNotFound:
            raise NotFoundException(f"unknown region '{name}'") from None
        log.info(
            "%s drains %s over %.0f s (%s)", request.user.name, name, data.over_s, printable(data.reason)
        )
        return run


class RunController(Controller):
    path = "/v1/runs"
    tags = ["regions"]
    guards = [staff_guard]

    @get(
        "/",
        summary="Region switch runs (drains, dials to 0): asked when, applied by each edge when",
        responses=AUTHENTICATED,
    )
    async def list_runs(self, state: State) -> RunList:
        runs: Runs = state.runs
        return RunList(runs=await runs.all())


@get(
    "/v1/store",
    guards=[staff_guard],
    tags=["store"],
    summary="The state store's position and where each edge stands against it",
    responses=AUTHENTICATED,
)
async def store_status(state: State) -> StoreStatus:
    """Whether every edge applied what the store holds: after a change, a restore or a new epoch."""
    store, topo = _store(state), state.topology
    position, keys = await store.position()
    reports = await store.applied(topo.names)
    now = time.time()
    return StoreStatus(
        epoch=position[0],
        version=position[1],
        keys_version=keys[1],
        edges=[
            EdgeStanding(
                edge=edge,
                snapshot=r.position,
                keys=r.keys,
                applied_at=r.at,
                reported_at=r.reported or None,
                silent=r.silent(now),
                standing=standing(position, keys, r),
            )
            for edge, r in reports.items()
        ],
        unreported=[n for n in topo.names if n not in reports],
    )


async def _record_switch(
    state: State, before: RegionState, after: RegionState, actor: str, reason: str, asked: float
) -> None:
    """A write that took a region out becomes a switch run; the write has landed whatever happens here."""
    runs: Runs | None = getattr(state, "runs", None)
    if runs is None:
        return
    try:
        await runs.switched(before, after, actor, reason, asked)
    except (StoreError, RedisError, OSError) as exc:
        log.warning("switch run for %s not recorded: %s", after.name, exc)


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    guards = [staff_guard]

    @get("/", summary="Who changed what, when, why; newest first", responses=QUERY)
    async def audit(
        self,
        state: State,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        region: str | None = None,
    ) -> AuditPage:
        return AuditPage.model_validate(
            {"entries": await _store(state).audit_log(limit=limit, region=region)}
        )


@get("/healthz", exclude_from_auth=True, include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", include_in_schema=False, media_type=CONTENT_TYPE_LATEST)
async def metrics(state: State) -> bytes:
    """Prometheus: the autoscaler's pools and decisions (any token: a scraper holds a viewer's or the
    pools role's)."""
    registry: CollectorRegistry = state.registry
    return generate_latest(registry)


@get("/readyz", exclude_from_auth=True, include_in_schema=False)
async def readyz(state: State) -> Response[dict[str, Any]]:
    try:
        await state.store.redis.ping()
    except Exception as exc:  # any failure to reach the primary means not ready
        log.warning("readyz: redis primary unreachable: %s", exc)  # the address stays in the log
        return Response({"ready": False, "error": "redis primary unreachable"}, status_code=503)
    return Response({"ready": True, "seeded": state.seeded.is_set()})


async def _answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """OPTIONS lists every method of the route from the app's route map: Litestar's own answer is built
    before all of a path's handlers have joined it (a region's listed GET without PATCH)."""
    if request.method != "OPTIONS":
        return None
    methods: set[str] = set()
    for path in request.route_handler.paths:
        methods.update(request.app.route_handler_method_map.get(path, {}))
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


def printable(text: str) -> str:
    """Request text fit for one log line: control characters (a newline could forge a whole line) escaped."""
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def _validation_handler(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    fields = [e.get("key") for e in (exc.extra or []) if isinstance(e, dict) and e.get("key")]
    if fields == ["data"] or exc.detail == "'data'":  # litestar's word for a missing body
        body = {
            "status_code": 422,
            "detail": "the request body is empty: send a JSON object, e.g. "
            '{"weight": 50, "reason": "why"} (weight and/or drained, and reason)',
            "fields": ["body"],
            "errors": [{"key": "body", "source": "body", "message": "empty"}],
        }
        return Response(body, status_code=422)
    return Response(
        {"status_code": 422, "detail": exc.detail, "fields": fields, "errors": exc.extra or []},
        status_code=422,
    )


def _http_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=exc.status_code, headers=exc.headers)


def _unavailable_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """503 in four kinds, none showing the store's address or credentials (the log has the error)."""
    why = exc.why if isinstance(exc, StoreRefusing) else refusal(exc)
    if why is not None:
        detail = (
            f"state store primary refuses writes: it is {why} (docs/runbooks.md: the Redis primary refuses "
            "writes); edges keep routing on their replicas"
        )
    elif isinstance(exc, StoreBusy):
        detail = "state store busy: every connection is in use; retry shortly"
    elif isinstance(exc, StoreBehind):
        detail = (
            "state store is being restored from the control plane's copy (it came back empty or old); "
            "retry shortly"
        )
    else:
        detail = (
            "state store primary unavailable: writes are refused until Redis is back "
            "(edges keep routing on their replicas)"
        )
    log.warning("admin API answered 503: %s (%s)", detail, exc)
    return Response({"status_code": 503, "detail": detail}, status_code=503, headers={"Retry-After": "1"})


def _internal_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if is_unavailable(exc):
        return _unavailable_handler(request, exc)
    if isinstance(exc, RecursionError):  # a body nested deeper than the parser goes: the client's fault
        return Response(
            {"status_code": 400, "detail": "the request body is nested too deeply", "fields": ["body"]},
            status_code=400,
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ValidationException: _validation_handler,
    HTTPException: _http_handler,
    StoreUnavailable: _unavailable_handler,
    StoreBusy: _unavailable_handler,
    StoreBehind: _unavailable_handler,
    Exception: _internal_handler,
}
OPENAPI = OpenAPIConfig(
    title="Meridian admin API",
    version="1",
    components=Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}),
    security=[{"bearer": []}],
)


ROUTES: list[Any] = [
    RegionController,
    RunController,
    AuditController,
    TenantController,
    top_usage,
    store_status,
    PoolController,
    healthz,
    readyz,
    metrics,
    *console.ROUTES,
]


def create_app(settings: ControlPlaneSettings, *, topology: Topology | None = None) -> Litestar:
    """Build the admin API. Topology defaults to settings.regions_file."""
    topo = topology or load_topology(settings.regions_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        client = open_store(settings, topo, app.state)
        workers = Workers.start(settings, topo, app.state)
        try:
            yield
        finally:
            await workers.stop()
            await client.aclose()

    state = {"settings": settings, "topology": topo, "tokens": list(settings.admin_tokens)}
    registry = CollectorRegistry()  # once per app: its lifespan may run again (a restart in place)
    app = Litestar(
        route_handlers=ROUTES,
        state=State({**state, "registry": registry, "store_metrics": StoreMetrics.register(registry)}),
        middleware=[DefineMiddleware(TokenAuth, exclude=["^/schema"])],
        lifespan=[lifespan],
        before_request=_answer_options,
        plugins=[PydanticPlugin(validate_strict=True)],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OPENAPI,
        debug=False,
        logging_config=None,
    )
    document_rules(app, None if topo.catalog.open else list(topo.catalog.models))
    return app
