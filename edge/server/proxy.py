"""A proxied request (I/O): open the request span, admit the request, locate the client, plan it (holding it
while a pool that scaled to zero starts), hold it while its pool is saturated, and hand it to the
forwarder; its usage goes to the ledger when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time

from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from edge.admission.admit import Admission, Admitted
from edge.admission.gate import Gate, Shed
from edge.admission.geo import ClientLocator, ClientPlace
from edge.admission.tenants import Principal
from edge.admission.wake import Waker
from edge.errors import error, internal_error
from edge.routing.planner import Planner, Wanted, wanted_of
from edge.routing.ranking import AttemptPlan
from edge.routing.snapshot import SnapshotFeed
from edge.server.models import ModelList
from edge.settings import EdgeSettings, TimeoutSet
from edge.telemetry import tracing
from edge.telemetry.active import Active
from edge.telemetry.answer import EdgeRequest
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.usage import Ledger
from edge.transport.forwarder import Forwarded, Forwarder, upstream_headers
from edge.transport.hedging import HedgePolicy
from fleet.models import Catalog
from fleet.pools import PoolKey
from fleet.state import Snapshot
from fleet.tenants import Priority

FIRST_SNAPSHOT_WAIT_S = 1.0  # an edge just started holds a request this long at most for its first snapshot


def with_model(body: bytes, model: str) -> bytes:
    """The body with its ``model`` replaced (a fallback's: the region serves that name)."""
    parsed = json.loads(body)
    parsed["model"] = model
    return json.dumps(parsed).encode()


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
        spans: tracing.RequestSpans,
        hedgeable_routes: tuple[str, ...],
        inference_routes: dict[str, tuple[str, ...]],
        catalog: Catalog,
        admission: Admission,
        gate: Gate,
        ledger: Ledger | None = None,
        waker: Waker | None = None,
    ) -> None:
        self.settings = settings
        self.feed = feed
        self.fallback = fallback
        self.clients = clients
        self.planner = planner
        self.hedging = hedging
        self.forwarder = forwarder
        self.metrics = metrics
        self.spans = spans
        self.hedgeable = frozenset(hedgeable_routes) if settings.hedge_enabled else frozenset()
        self.edge_headers = {"X-Meridian-Edge": settings.region}
        self.active = Active()  # the requests in flight here (the console's view, an operator's cancel)
        self.started = time.monotonic()
        self.routes = {path: frozenset(methods) for path, methods in inference_routes.items()}
        self.catalog = catalog
        self.admission = admission
        self.gate = gate
        self.ledger = ledger  # None: no usage accounting (authentication off)
        self.waker = waker  # holds requests for pools that scaled to zero
        self.models = ModelList(
            feed=feed,
            fallback=fallback,
            planner=planner,
            catalog=catalog,
            admission=admission,
            metrics=metrics,
            edge_headers=self.edge_headers,
        )
        self._model_timeouts: dict[tuple[Priority, float], TimeoutSet] = {}  # (priority, a model's limit)
        key = settings.region_api_key
        self.region_credential = None if key is None else key.get_secret_value()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The request span around the proxying; a bug answers 500 in OpenAI's shape, never a traceback.
        Only the inference routes are forwarded: anything else never reaches a region."""
        path = request.path
        methods = self.routes.get(path)
        if methods is None and path.startswith("/v1/models/"):  # one model (the SDK's models.retrieve)
            methods = self.routes.get("/v1/models")
        if methods is None or request.method not in methods:
            return self._not_forwarded(request, methods)
        principal = None
        if (tenants := self.admission.tenants) is not None:
            if not tenants.loaded.is_set():  # not "wrong key": the set is not in yet (a client retries)
                return self.admission.keys_loading()
            if (stale := tenants.stale_for()) is not None:
                return self.admission.keys_stale(stale)
            principal = self.admission.authenticate(request)
            if principal is None:
                return self.admission.unauthorized()
            if principal.expires_at is not None and time.time() >= principal.expires_at:
                return self.admission.expired(principal.expires_at)
        if path.startswith("/v1/models") and not self.catalog.open:
            return await self.models.answer(
                principal, path.removeprefix("/v1/models").removeprefix("/") or None
            )
        span = self.spans.start(request)
        key = None
        if isinstance(request, EdgeRequest):  # its answer's x-request-id: the trace id
            request.request_id = tracing.trace_hex(span)
            key = self.active.add(request)
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
        finally:
            if key is not None:  # no longer in flight
                del self.active.requests[key]
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

    async def _proxy(
        self, request: web.BaseRequest, span: trace.Span, principal: Principal | None
    ) -> web.StreamResponse:
        admitted = await self.admission.admit(request, principal)
        if not isinstance(admitted, Admitted):  # the refusal (an answer is a mapping: its ABC check is dear)
            return admitted
        if isinstance(request, EdgeRequest):
            request.admitted = admitted  # the console's active requests: its tenant and model
        span.set_attribute(tracing.ATTR_PRIORITY, admitted.priority)
        if admitted.tenant is not None:
            span.set_attribute(tracing.ATTR_TENANT, admitted.tenant.id)  # its id: never the key
        used: tuple[int, int] | None = None
        try:
            answer = await self._route(request, span, admitted)
            used = self._account(admitted, answer)
            return answer.response
        finally:
            self.admission.release(admitted, used)

    def _account(self, admitted: Admitted, answer: Forwarded) -> tuple[int, int] | None:
        """The answer's tokens and cost into the usage ledger and the tenant's counters; the (prompt,
        completion) tokens it is charged (what the region reported, else the prompt's estimate plus the
        events streamed)."""
        tally = admitted.tally
        if tally is None:
            return None
        region, failed = answer.region, answer.failed
        # no region answered (shed, no region, every attempt failed), or its answer was an error before any
        # token (a 500 relayed): no tokens, nothing spent (it counted against RPM)
        charged = region is not None and not (failed and tally.events == 0 and not tally.exact)
        prompt, completion = tally.tokens(admitted.prompt_estimate()) if charged else (0, 0)
        spend = admitted.spend_nusd = self.catalog.cost_nusd(admitted.model, prompt, completion)
        if self.ledger is not None:
            self.ledger.add(
                tenant=admitted.tenant_id,
                model=admitted.model or "-",
                region=region or "none",
                unix_s=time.time(),
                prompt=prompt,
                completion=completion,
                error=failed,
                spend_nusd=spend,
            )
            self.metrics.tenants.answered(
                admitted.tenant_id, failed, prompt, completion, admitted.model or "-", spend
            )
        return prompt, completion

    async def _first_snapshot(self) -> Snapshot | None:
        """An edge just started holds a request up to ``FIRST_SNAPSHOT_WAIT_S`` for its first snapshot rather
        than route on regions.yaml alone, which knows no dial, drain or replica switched off."""
        if time.monotonic() - self.started > FIRST_SNAPSHOT_WAIT_S:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_SNAPSHOT_WAIT_S):
                await self.feed.news()
        return self.feed.current

    async def _route(self, request: web.BaseRequest, span: trace.Span, admitted: Admitted) -> Forwarded:
        """Locate the client, plan the request, hold it while its pool is saturated, and forward it."""
        ip, place = self._locate(request, span)
        if isinstance(request, EdgeRequest):
            request.continent = place.continent
        snap = self.feed.current or await self._first_snapshot()
        if snap is None:  # never reached the store: route on regions.yaml alone (nearest region first)
            self.metrics.fallback.inc()
            snap = self.fallback
        planned = await self._plan(place, snap, admitted)
        if not isinstance(planned, tuple):  # the answer when no region can take it
            return Forwarded.local(planned)
        plan, wanted, body = planned
        primary = plan.decision.primary
        assert primary is not None  # _plan answered otherwise
        span.set_attribute(tracing.ATTR_REGION, primary)
        if plan.decision.backup:
            span.set_attribute(tracing.ATTR_BACKUP, plan.decision.backup)
        pool, gate = PoolKey(primary, wanted.model), self.gate
        if not gate.try_pass(pool):
            shed = await gate.wait(
                pool, tenant=admitted.tenant_id, band=admitted.priority, cost=admitted.cost
            )
            if shed is not None:
                return Forwarded.local(self._overloaded(admitted, primary, shed))
        started = time.monotonic()
        try:
            answer = await self._send(request, span, admitted, ip, place, snap, plan, wanted, body)
        finally:
            gate.leave(pool)
        if span.is_recording():
            span.set_attribute("meridian.duration_ms", round((time.monotonic() - started) * 1000, 2))
        return answer

    def _timeouts(self, priority: Priority, model: str | None) -> TimeoutSet:
        """The priority's timeouts, with the model's own first-token limit where the catalog gives one."""
        base = self.settings.timeouts[priority]
        own = self.catalog.first_token_timeout_s(model)
        if own is None:
            return base
        hit = self._model_timeouts.get((priority, own))
        if hit is None:
            hit = self._model_timeouts[(priority, own)] = base.model_copy(update={"first_token_s": own})
        return hit

    def _locate(self, request: web.BaseRequest, span: trace.Span) -> tuple[str | None, ClientPlace]:
        """Where the client is (its peer, trusted X-Forwarded-For); counts it when geo-DNS misrouted it."""
        ip, place = self.clients.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))
        if place.country:
            span.set_attribute(tracing.ATTR_CLIENT_COUNTRY, place.country)
        if place.source == "geoip":
            nearer = self.planner.client_view(place).misrouted
            if nearer is not None:
                self.metrics.child(self.metrics.misrouted, nearer).inc()
        return ip, place

    async def _plan(
        self, place: ClientPlace, snap: Snapshot, admitted: Admitted
    ) -> tuple[AttemptPlan, Wanted, bytes] | web.StreamResponse:
        """The request's attempt plan: for its model, else a fallback model, else after waking a pool at
        zero; an answer when no region can take it."""
        wanted, body = admitted.wanted, admitted.body
        plan = self.planner.plan(place, snap, wanted)
        if plan.decision.primary is None and wanted.model is not None:
            plan, wanted, body = self._fallback(place, snap, plan, wanted, body)
        if (plan.decision.primary is None or plan.decision.panic) and self.waker is not None:
            tenant = admitted.tenant.id if admitted.tenant is not None else None
            woken = await self._wake(place, snap, wanted, wanted.model or admitted.model, tenant)
            if isinstance(woken, web.Response):
                return woken
            plan = woken or plan
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
        return plan, wanted, body

    async def _send(
        self,
        request: web.BaseRequest,
        span: trace.Span,
        admitted: Admitted,
        ip: str | None,
        place: ClientPlace,
        snap: Snapshot,
        plan: AttemptPlan,
        wanted: Wanted,
        body: bytes,
    ) -> Forwarded:
        """Forward along the plan; when every attempt at the model failed before the client saw a byte, its
        next fallback model."""
        priority = admitted.priority
        headers = upstream_headers(
            request.headers,
            client_ip=ip,
            edge=self.settings.region,
            credential=self.region_credential,
            keep_authorization=self.admission.tenants is None,
            priority=priority if admitted.tenant is not None else None,
        )
        fallbacks = list(self.catalog.fallbacks(wanted.model)) if wanted.model is not None else []
        while True:
            if fallbacks and self.planner.refusing(plan.decision.order, wanted.model):
                plan, wanted, body = self._on_error(place, snap, wanted, body, fallbacks)
                continue
            larger = self._larger(wanted.model, fallbacks)
            answer = await self.forwarder.forward(
                request,
                plan=plan,
                body=body,
                headers=headers,
                timeouts=self._timeouts(priority, wanted.model),
                hedge_delay_s=self._hedge_delay(request, priority, plan, snap),
                parent=span,
                model=wanted.model,
                extra_headers=admitted.headers,
                tally=admitted.tally,
                standing=admitted.standing,
                final=not fallbacks,
                larger_context=bool(larger),
            )
            if isinstance(answer, Forwarded):
                return answer
            if answer.cause == "context":  # only a model with room for the request can answer it
                fallbacks[:] = larger
            plan, wanted, body = self._on_error(place, snap, wanted, body, fallbacks)

    async def _wake(
        self, place: ClientPlace, snap: Snapshot, wanted: Wanted, model: str | None, tenant: str | None
    ) -> AttemptPlan | web.Response | None:
        """No region is routable for the model: if the nearest pool of it that may scale to zero has no
        replica serving, wait (bounded) for its first, re-planning on every new snapshot (None: no such
        pool; the plan stands)."""
        assert self.waker is not None
        if model is None:
            return None
        names, network = self.planner.topology.names, self.planner.network()
        region = self.waker.region(model, snap, lambda r: network.rtt_ms[names.index(r)])
        if region is None or self.planner.replicas(region, model):
            return None

        def ready() -> AttemptPlan | None:
            plan = self.planner.plan(place, self.feed.current or snap, wanted)
            d = plan.decision
            return plan if d.primary is not None and not d.panic else None

        plan = await self.waker.hold(PoolKey(region, model), ready, self.feed.news, tenant)
        if plan is not None:
            return plan
        wait_s = self.waker.hold_s
        return error(
            503,
            f"{model} is starting a first replica in {region} and none was serving within "
            f"{wait_s:g} s (or too many requests wait for one); retry later",
            kind="overloaded_error",
            code="model_starting",
            headers={**self.edge_headers, "Retry-After": "10"},
        )

    def _overloaded(self, admitted: Admitted, region: str, shed: Shed) -> web.Response:
        """503 ``overloaded``: every replica of the pool is saturated and this request's band is full or it
        waited as long as its band allows."""
        band = admitted.priority
        self.metrics.tenants.outcome(admitted.tenant_id, "shed")
        wait_s = self.gate.bands[band].wait_s
        why = "its queue is full" if shed == "full" else f"it waited {wait_s:g} s"
        return error(
            503,
            f"{region} is saturated for this model and the request was shed ({band} priority: {why}); "
            "retry later",
            kind="overloaded_error",
            code="overloaded",
            headers={**self.edge_headers, "Retry-After": str(max(1, math.ceil(wait_s)))},
        )

    def _larger(self, model: str | None, fallbacks: list[str]) -> list[str]:
        """The fallbacks, in order, whose context is larger than ``model``'s."""
        have = self.catalog.context_length(model)
        if have is None:
            return []
        return [f for f in fallbacks if (self.catalog.context_length(f) or 0) > have]

    def _on_error(
        self, place: ClientPlace, snap: Snapshot, wanted: Wanted, body: bytes, fallbacks: list[str]
    ) -> tuple[AttemptPlan, Wanted, bytes]:
        """Every attempt at ``wanted``'s model failed: the plan for the next of its catalog fallbacks (taken
        off ``fallbacks``; the body then names the model served, X-Meridian-Model shows it)."""
        assert wanted.model is not None
        other = fallbacks.pop(0)
        self.metrics.child(self.metrics.model_fallbacks, wanted.model, other).inc()
        alt = wanted_of(self.catalog, other, wanted.key)
        return self.planner.plan(place, snap, alt), alt, with_model(body, other)

    def _fallback(
        self, place: ClientPlace, snap: Snapshot, plan: AttemptPlan, wanted: Wanted, body: bytes
    ) -> tuple[AttemptPlan, Wanted, bytes]:
        """No region serving the model is routable: the catalog's fallbacks, in order, if one is routable
        (the body then names the model served; X-Meridian-Model shows it)."""
        assert wanted.model is not None
        for other in self.catalog.fallbacks(wanted.model):
            alt = wanted_of(self.catalog, other, wanted.key)
            alt_plan = self.planner.plan(place, snap, alt)
            if alt_plan.decision.primary is not None:
                self.metrics.child(self.metrics.model_fallbacks, wanted.model, other).inc()
                return alt_plan, alt, with_model(body, other)
        return plan, wanted, body

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
