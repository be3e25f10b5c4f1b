"""A proxied request (I/O): check the client's input, open the request span, locate the client, get the
request's attempt plan and hedge delay, and hand them to the forwarder."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.http import HttpVersion11
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from edge import tracing
from edge.forwarder import Forwarder, upstream_headers
from edge.geo import ClientLocator, ClientPlace
from edge.hedging import HedgePolicy
from edge.limiter import Limiter, Verdict
from edge.limits import estimate_tokens
from edge.metrics import EdgeMetrics
from edge.planner import NOTHING, Planner, Wanted
from edge.request import BodyError, Inference, read, used_tokens
from edge.routing import AttemptPlan
from edge.settings import EdgeSettings, Priority
from edge.snapshot import SnapshotFeed
from edge.tenants import Principal, TenantsFeed
from fleet.models import Catalog
from fleet.state import Snapshot

log = logging.getLogger("meridian.edge")

PRIORITIES: dict[str, Priority] = {"critical": "critical", "normal": "normal", "batch": "batch"}


def error(
    status: int,
    message: str,
    *,
    kind: str,
    headers: dict[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    """An error for the client, in OpenAI's shape."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def internal_error(request: web.BaseRequest) -> web.Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "internal error in the edge", kind="meridian_internal")


def with_model(body: bytes, model: str) -> bytes:
    """The body with its ``model`` replaced (a fallback's: the region serves that name)."""
    parsed = json.loads(body)
    parsed["model"] = model
    return json.dumps(parsed).encode()


class BadInput(Exception):
    """The client's request is refused before any region sees it (status, message, metric label, and
    OpenAI's code and param when there is one)."""

    def __init__(
        self, status: int, message: str, what: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.what = what
        self.code = code
        self.param = param


class Proxy:
    def __init__(
        self,
        *,
        settings: EdgeSettings,
        feed: SnapshotFeed,
        fallback: Snapshot,
        clients: ClientLocator,
        planner: Planner,
        hedging: HedgePolicy,
        forwarder: Forwarder,
        metrics: EdgeMetrics,
        tracer: trace.Tracer,
        sampler: tracing.HeadSampler,
        hedgeable_routes: tuple[str, ...],
        inference_routes: dict[str, tuple[str, ...]],
        catalog: Catalog,
        tenants: TenantsFeed | None,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.feed = feed
        self.fallback = fallback
        self.clients = clients
        self.planner = planner
        self.hedging = hedging
        self.forwarder = forwarder
        self.metrics = metrics
        self.tracer = tracer
        self.sampler = sampler
        self.hedgeable = frozenset(hedgeable_routes) if settings.hedge_enabled else frozenset()
        self.edge_headers = {"X-Meridian-Edge": settings.region}
        self.routes = {path: frozenset(methods) for path, methods in inference_routes.items()}
        self.catalog = catalog
        self.tenants = tenants  # None: authentication off
        self.limiter = limiter
        key = settings.region_api_key
        self.region_credential = None if key is None else key.get_secret_value()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The request span around the proxying; a bug answers 500 in OpenAI's shape, never a traceback.
        Only the inference routes are forwarded: anything else never reaches a region."""
        methods = self.routes.get(request.path)
        if methods is None or request.method not in methods:
            return self._not_forwarded(request, methods)
        principal = None
        if self.tenants is not None:
            principal = self._authenticate(request)
            if principal is None:
                return self._unauthorized()
        if request.path == "/v1/models" and not self.catalog.open:
            return self.models_view()
        headers = request.headers
        if "traceparent" not in headers:
            span = self.sampler.left_out() or self._server_span(request, None)
        elif self._trusts_trace_of(request):  # a peer of ours: its sampling decision is followed
            span = self._server_span(request, tracing.PROPAGATOR.extract(headers))
        else:  # a client's trace context: linked, but our own sampler decides (and pays)
            client = trace.get_current_span(tracing.PROPAGATOR.extract(headers)).get_span_context()
            links = [trace.Link(client)] if client.is_valid else None
            span = self.sampler.left_out() or self._server_span(request, None, links=links)
        try:
            resp = await self._proxy(request, span, principal)
        except web.HTTPException:
            span.end()
            raise
        except Exception as exc:
            if isinstance(exc, ConnectionResetError) and (
                request.transport is None or request.transport.is_closing()
            ):  # the client left while we answered: nothing to answer, nothing broke
                self.metrics.child(self.metrics.stream_aborts, "none", "client").inc()
                span.set_attribute(tracing.ATTR_OUTCOME, "client went away")
                span.end()
                return web.Response(status=499)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            return internal_error(request)
        if span.is_recording():
            span.set_attribute("http.response.status_code", resp.status)
            if resp.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        return resp

    def _not_forwarded(self, request: web.BaseRequest, methods: frozenset[str] | None) -> web.Response:
        if methods is None:
            self.metrics.bad_input.labels(what="route").inc()
            return error(
                404,
                f"{request.path} is not an inference route of this API",
                kind="invalid_request_error",
                headers=self.edge_headers,
            )
        allow = ", ".join(sorted(methods))
        self.metrics.bad_input.labels(what="method").inc()
        return error(
            405,
            f"{request.path} answers {allow} only",
            kind="invalid_request_error",
            headers={**self.edge_headers, "Allow": allow},
        )

    def _trusts_trace_of(self, request: web.BaseRequest) -> bool:
        networks = self.settings.tracing_trusted_peers
        if not networks or request.remote is None:
            return False
        try:
            peer = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        return any(peer in net for net in networks)

    def _server_span(
        self, request: web.BaseRequest, parent: Context | None, *, links: list[trace.Link] | None = None
    ) -> trace.Span:
        return self.tracer.start_span(
            tracing.SPAN_SERVER,
            context=parent,
            links=links,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                tracing.ATTR_EDGE: self.settings.region,
            },
        )

    async def _proxy(
        self, request: web.BaseRequest, span: trace.Span, principal: Principal | None
    ) -> web.StreamResponse:
        try:
            priority = self._priority(request, principal)
            body = await self._body(request)
            wanted, max_tokens = self._wanted(request, body, principal)
        except BadInput as exc:
            self.metrics.bad_input.labels(what=exc.what).inc()
            kind = "invalid_request_error" if exc.code else "meridian_bad_input"
            refused = error(
                exc.status, str(exc), kind=kind, headers=self.edge_headers, code=exc.code, param=exc.param
            )
            if exc.status in (408, 413):  # the client may still be sending: do not read on
                refused.force_close()
            return refused
        span.set_attribute(tracing.ATTR_PRIORITY, priority)
        rate: dict[str, str] | None = None
        settle: Callable[[bytes], None] | None = None
        if principal is not None:
            span.set_attribute(tracing.ATTR_TENANT, principal.tenant.id)  # its id: never the key
            limits = principal.tenant.limits
            if self.limiter is not None and (limits.rpm is not None or limits.tpm is not None):
                reserved = estimate_tokens(len(body), max_tokens, self.settings.default_max_tokens)
                verdict = await self.limiter.admit(principal.tenant, reserved)
                if not verdict.admitted:
                    return self._rate_limited(principal, verdict)
                rate = verdict.headers
                if limits.tpm is not None:
                    settle = self._settler(principal, reserved)
            if self.limiter is not None and limits.max_concurrent is not None:
                no, ticket = await self.limiter.enter(principal.tenant)
                if no is not None:
                    return self._rate_limited(principal, no)
                try:
                    return await self._route(request, span, priority, body, wanted, rate, settle)
                finally:
                    if ticket is not None:
                        self.limiter.leave(ticket)
        return await self._route(request, span, priority, body, wanted, rate, settle)

    async def _route(
        self,
        request: web.BaseRequest,
        span: trace.Span,
        priority: Priority,
        body: bytes,
        wanted: Wanted,
        rate: dict[str, str] | None,
        settle: Callable[[bytes], None] | None,
    ) -> web.StreamResponse:
        """Locate the client, plan the request and forward it."""
        ip, place = self.clients.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))
        if place.country:
            span.set_attribute(tracing.ATTR_CLIENT_COUNTRY, place.country)
        if place.source == "geoip":
            nearer = self.planner.client_view(place).misrouted
            if nearer is not None:
                self.metrics.child(self.metrics.misrouted, nearer).inc()
        snap = self.feed.current
        if snap is None:  # never reached the store: route on regions.yaml alone (nearest region first)
            self.metrics.fallback.inc()
            snap = self.fallback
        plan = self.planner.plan(place, snap, wanted)
        if plan.decision.primary is None and wanted.model is not None:
            plan, wanted, body = self._fallback(place, snap, plan, wanted, body)
        decision = plan.decision
        if decision.panic:
            self.metrics.panic.inc()
        if decision.primary is None:
            return error(
                503,
                "no routable region for this client",
                kind="meridian_no_region",
                headers=self.edge_headers,
            )
        span.set_attribute(tracing.ATTR_REGION, decision.primary)
        if decision.backup:
            span.set_attribute(tracing.ATTR_BACKUP, decision.backup)
        started = time.monotonic()
        resp = await self.forwarder.forward(
            request,
            plan=plan,
            body=body,
            headers=upstream_headers(
                request.headers,
                client_ip=str(ip) if ip else None,
                edge=self.settings.region,
                credential=self.region_credential,
                keep_authorization=self.tenants is None,
            ),
            timeouts=self.settings.timeouts[priority],
            hedge_delay_s=self._hedge_delay(request, priority, plan, snap),
            parent=span,
            model=wanted.model,
            extra_headers=rate,
            on_body=settle,
        )
        span.set_attribute("meridian.duration_ms", round((time.monotonic() - started) * 1000, 2))
        return resp

    def _wanted(
        self, request: web.BaseRequest, body: bytes, principal: Principal | None
    ) -> tuple[Wanted, int | None]:
        """The model, affinity key and adapter of an inference body (and its max tokens); the model checked
        against the catalog and the tenant's models (else 404 ``model_not_found``, as OpenAI answers it)."""
        wanted, facts = self._wanted_facts(request, body, principal)
        return wanted, None if facts is None else facts.max_tokens

    def _wanted_facts(
        self, request: web.BaseRequest, body: bytes, principal: Principal | None
    ) -> tuple[Wanted, Inference | None]:
        if request.method != "POST":
            return NOTHING, None
        try:
            facts = read(body, request.headers.get("X-Session-Id"))
        except BodyError as exc:
            raise BadInput(400, str(exc), "body", code="invalid_body") from None
        catalog, model = self.catalog, facts.model
        if model is not None and (
            (principal is not None and not principal.tenant.may_use(model)) or not catalog.known(model)
        ):
            self.metrics.model_not_found.inc()
            raise BadInput(
                404,
                f"The model `{model[:200]}` does not exist or you do not have access to it.",
                "model",
                code="model_not_found",
                param="model",
            )
        if catalog.open:
            return (Wanted(None, facts.key, None) if facts.key is not None else NOTHING), facts
        if model is None:
            raise BadInput(400, "the request names no model", "model", code="missing_model", param="model")
        return Wanted(model, facts.key, model if catalog.adapter_base(model) else None), facts

    def _fallback(
        self, place: ClientPlace, snap: Snapshot, plan: AttemptPlan, wanted: Wanted, body: bytes
    ) -> tuple[AttemptPlan, Wanted, bytes]:
        """No region serving the model is routable: the catalog's fallbacks, in order, if one is routable
        (the body then names the model served; X-Meridian-Model shows it)."""
        assert wanted.model is not None
        for other in self.catalog.fallbacks(wanted.model):
            alt = Wanted(other, wanted.key, other if self.catalog.adapter_base(other) else None)
            alt_plan = self.planner.plan(place, snap, alt)
            if alt_plan.decision.primary is not None:
                self.metrics.child(self.metrics.model_fallbacks, wanted.model, other).inc()
                return alt_plan, alt, with_model(body, other)
        return plan, wanted, body

    def models_view(self) -> web.Response:
        """The models routable now, in OpenAI's list format, each with the regions that serve it."""
        snap = self.feed.current or self.fallback
        routes = self.planner.cache(snap)
        data = []
        for name, spec in self.catalog.models.items():
            regions = sorted(
                r for r in routes.regions_serving(name) if (st := snap.regions.get(r)) and st.routable
            )
            if regions:
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "meridian",
                        "meridian": {
                            "regions": regions,
                            "base": spec.base,
                            "context_length": spec.context_length,
                            "fallbacks": list(spec.fallbacks),
                        },
                    }
                )
        return web.json_response({"object": "list", "data": data}, headers=self.edge_headers)

    def _priority(self, request: web.BaseRequest, principal: Principal | None) -> Priority:
        """The request's priority: the header's, capped by what its tenant may use (default: the tenant's)."""
        raw = request.headers.get("X-Meridian-Priority")
        asked = None if raw is None else PRIORITIES.get(raw.strip().lower())
        if raw is not None and asked is None:
            raise BadInput(
                400, f"header X-Meridian-Priority must be one of {', '.join(PRIORITIES)}", "priority"
            )
        if principal is not None:
            return principal.tenant.priority_for(asked)
        return asked or "normal"

    def _settler(self, principal: Principal, reserved: int) -> Callable[[bytes], None]:
        """What a buffered answer's ``usage`` settles: the tenant pays its real tokens, not the estimate
        (a streamed answer is charged its reservation)."""
        limiter = self.limiter
        assert limiter is not None

        def settle(answer: bytes) -> None:
            used = used_tokens(answer)
            if used is not None:
                limiter.settle(principal.tenant, reserved, used)

        return settle

    def _rate_limited(self, principal: Principal, verdict: Verdict) -> web.Response:
        self.metrics.child(self.metrics.rate_limited, verdict.refused or "requests").inc()
        limit = verdict.refused or "requests"
        what = "concurrent requests" if limit == "concurrent" else f"{limit} per minute"
        return error(
            429,
            f"Rate limit reached for tenant {principal.tenant.id} on {what}; "
            f"retry after {verdict.retry_after_s:.2f} s",
            kind=limit,
            code="rate_limit_exceeded",
            headers={
                **self.edge_headers,
                **verdict.headers,
                "Retry-After": str(max(1, math.ceil(verdict.retry_after_s))),
            },
        )

    def _authenticate(self, request: web.BaseRequest) -> Principal | None:
        """The caller's tenant from ``Authorization: Bearer <key>`` (None: missing, unknown or revoked)."""
        assert self.tenants is not None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        return self.tenants.resolve(presented.strip())

    def _unauthorized(self) -> web.Response:
        self.metrics.bad_input.labels(what="api_key").inc()
        return error(
            401,
            "Incorrect or missing API key: send Authorization: Bearer <key> (keys are issued per tenant by "
            "the operators)",
            kind="invalid_request_error",
            code="invalid_api_key",
            headers={**self.edge_headers, "WWW-Authenticate": 'Bearer realm="meridian"'},
        )

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The request body, within the limit; ``Expect: 100-continue`` answered first (a router's job, had
        we one)."""
        expect = request.headers.get("Expect")
        if expect is not None and request.version >= HttpVersion11:
            if expect.lower() != "100-continue":
                raise BadInput(
                    417, f"header Expect: {expect[:64]!r} is not supported (only 100-continue)", "expect"
                )
            if (request.content_length or 0) > self.settings.max_body_bytes:  # refuse before it is sent
                raise BadInput(413, self._too_large(), "body_too_large")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # aiohttp's count: the interim response is not the response
        try:
            if request.content.is_eof():  # the whole body came with the headers: no timer needed
                return await request.read()
            async with asyncio.timeout(self.settings.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise BadInput(
                408,
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s "
                "(setting MERIDIAN_BODY_TIMEOUT_S)",
                "body_timeout",
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise BadInput(413, self._too_large(), "body_too_large") from None

    def _too_large(self) -> str:
        limit = self.settings.max_body_bytes
        return f"request body exceeds the limit of {limit} bytes (setting MERIDIAN_MAX_BODY_BYTES)"

    def _hedge_delay(
        self, request: web.BaseRequest, priority: Priority, plan: AttemptPlan, snap: Snapshot
    ) -> float | None:
        """Critical requests on hedgeable routes may be hedged to the backup region: after this delay."""
        if priority != "critical" or request.path not in self.hedgeable:
            return None
        d = plan.decision
        assert d.primary is not None
        backup = snap.regions.get(d.backup) if d.backup else None
        hedging = self.hedging
        eligible = hedging.eligible(
            primary=d.primary, backup=d.backup, backup_utilization=backup.utilization if backup else 1.0
        )
        delay = hedging.delay(d.primary)
        self.metrics.child(self.metrics.hedge_delay, d.primary).set(delay)
        return delay if eligible else None
