"""The edge's aiohttp application: typed app state, resources in cleanup_ctx, and the routes
(/healthz, /readyz, /metrics, /_meridian/route, and the proxy for every other path)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controlplane.redisconn import connect
from controlplane.state import Snapshot, Topology, initial_state
from controlplane.topology import load_topology
from edge import routing, tracing
from edge.budget import RetryBudget
from edge.failback import Failback
from edge.forwarder import Attempt, Forwarder, HedgePlan, Resilience, upstream_headers
from edge.geo import ClientPlace, GeoLocator, client_ip
from edge.hedging import HedgeBudget, QuantileWindow, hedge_delay, may_hedge
from edge.metrics import EdgeMetrics
from edge.observed import Observed
from edge.outlier import OutlierDetector, OutlierPolicy
from edge.reporter import Reporter
from edge.settings import EdgeSettings, Priority
from edge.snapshot import SnapshotFeed
from edge.upstream import UpstreamPool

log = logging.getLogger("meridian.edge")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHUTDOWN_TASKS_S = 5.0

PRIORITIES: dict[str, Priority] = {"critical": "critical", "normal": "normal", "batch": "batch"}

SETTINGS = web.AppKey("settings", EdgeSettings)
TOPOLOGY = web.AppKey("topology", Topology)
FEED = web.AppKey("feed", SnapshotFeed)
GEO = web.AppKey("geo", GeoLocator)
OBSERVED = web.AppKey("observed", Observed)
METRICS = web.AppKey("metrics", EdgeMetrics)
TRACER = web.AppKey("tracer", trace.Tracer)
RNG = web.AppKey("rng", random.Random)
FORWARDER = web.AppKey("forwarder", Forwarder)
REPLICAS = web.AppKey("replicas", dict)  # region -> {replica name -> base url}
REPORTER = web.AppKey("reporter", Reporter)
RESILIENCE = web.AppKey("resilience", Resilience)
FAILBACK = web.AppKey("failback", Failback)
FALLBACK_SNAPSHOT = web.AppKey("fallback_snapshot", Snapshot)
HEDGE_BUDGET = web.AppKey("hedge_budget", HedgeBudget)
PLANS = web.AppKey("plans", routing.PlanCache)


class ServingReplicas:
    """Replicas not down per region, for the current snapshot (recomputed when the snapshot changes)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.snapshot: Snapshot | None = None
        self.by_region: dict[str, list[str]] = {}

    def get(self, snapshot: Snapshot, region: str) -> list[str]:
        if snapshot is not self.snapshot:
            self.snapshot, self.by_region = snapshot, {}
        hit = self.by_region.get(region)
        if hit is None:
            hit = self.by_region[region] = routing.serving_replicas(self.topology, snapshot, region)
        return hit


SERVING = web.AppKey("serving", ServingReplicas)
SAMPLER = web.AppKey("sampler", tracing.HeadSampler)
STEADY = web.AppKey("steady", list)  # [the snapshot under which no region is ramping or held down]


class ConfigError(RuntimeError):
    """The edge cannot start with this configuration (message names the setting)."""


def _error(status: int, message: str, *, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status, headers=headers)


def create_app(
    settings: EdgeSettings,
    *,
    topology: Topology | None = None,
    tracer_provider: TracerProvider | None = None,
    rng: random.Random | None = None,
) -> web.Application:
    topo = topology or load_topology(settings.regions_file)
    home = topo.region(settings.region)
    if home is None:
        raise ConfigError(
            f"MERIDIAN_REGION={settings.region!r} is not a region in {settings.regions_file} "
            f"(known: {', '.join(topo.names)})"
        )
    provider = tracer_provider or tracing.make_tracer_provider(
        service_name=settings.service_name,
        region=settings.region,
        exporter=settings.tracing_exporter,
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    feed = SnapshotFeed(
        url=settings.redis_url,
        resync_interval_s=settings.resync_interval_s,
        known_regions=frozenset(topo.names),
        connect=lambda url: connect(url, socket_timeout=2.0),
    )
    observed = Observed()
    metrics = EdgeMetrics(
        snapshot_age=lambda: -1.0 if (a := feed.age()) is None else a,
        snapshot_version=lambda: float(feed.current.version) if feed.current else -1.0,
        store_connected=lambda: 1.0 if feed.connected else 0.0,
    )
    app[SETTINGS] = settings
    app[TOPOLOGY] = topo
    app[FEED] = feed
    app[GEO] = GeoLocator(settings.geoip_db, fallback=home.location)
    app[OBSERVED] = observed
    app[METRICS] = metrics
    app[TRACER] = provider.get_tracer("meridian.edge")
    app[RNG] = rng or random.Random()
    app[PLANS] = routing.PlanCache()
    app[SAMPLER] = tracing.HeadSampler(settings.tracing_sample_ratio, app[RNG])
    app[SERVING] = ServingReplicas(topo)
    app[STEADY] = [None]
    app[REPLICAS] = {r.name: {rep.name: rep.base_url for rep in r.replicas} for r in topo.regions}
    app[RESILIENCE] = Resilience(
        outliers=OutlierDetector(
            policy=OutlierPolicy(
                consecutive_failures=settings.outlier_consecutive_failures,
                failure_rate=settings.outlier_failure_rate,
                base_ejection_s=settings.outlier_base_ejection_s,
                max_ejection_s=settings.outlier_max_ejection_s,
                probe_interval_s=settings.outlier_probe_interval_s,
            ),
            max_ejection_fraction=settings.outlier_max_ejection_fraction,
        ),
        budget=RetryBudget(ratio=settings.retry_budget_ratio, min_per_s=settings.retry_budget_min_per_s),
        rng=app[RNG],
        backoff_base_s=settings.retry_backoff_base_s,
        backoff_cap_s=settings.retry_backoff_cap_s,
        replica_counts={r.name: len(r.replicas) for r in topo.regions},
    )
    app[HEDGE_BUDGET] = HedgeBudget(
        ratio=settings.hedge_budget_ratio,
        burst=settings.hedge_budget_burst,
        tokens=settings.hedge_budget_burst,
    )
    metrics.hedge_extra_load.set_function(lambda: app[HEDGE_BUDGET].extra_load)
    app[FAILBACK] = Failback(ramp_s=settings.failback_ramp_s, hold_base_s=settings.failback_hold_base_s)
    app[FALLBACK_SNAPSHOT] = Snapshot(
        version=-1, regions={r.name: initial_state(r, now=0.0) for r in topo.regions}, taken_at=0.0
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = UpstreamPool(limit=settings.pool_size, keepalive_s=settings.upstream_keepalive_s)
        app[FORWARDER] = Forwarder(
            pool=pool,
            tracer=app[TRACER],
            observed=observed,
            metrics=metrics,
            resilience=app[RESILIENCE],
            edge_region=settings.region,
        )
        tasks = [asyncio.create_task(feed.run(), name="snapshot-feed")]
        primary = None
        if settings.redis_primary_url:
            primary = connect(settings.redis_primary_url, socket_timeout=1.0)
            reporter = Reporter(
                client=primary,
                edge=settings.region,
                observed=observed,
                interval_s=settings.observation_interval_s,
            )
            app[REPORTER] = reporter
            tasks.append(asyncio.create_task(reporter.run(), name="reporter"))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_TASKS_S)
            for t in stuck:  # shutting down must finish even if a Redis client swallowed its cancel
                log.warning("background task %s did not stop within %.0f s", t.get_name(), SHUTDOWN_TASKS_S)
            await pool.close()
            if primary is not None:
                with contextlib.suppress(Exception):
                    await primary.aclose()
            app[GEO].close()
            if tracer_provider is None:
                provider.shutdown()

    app.cleanup_ctx.append(resources)
    app.router.add_get("/healthz", _guarded(healthz))
    app.router.add_get("/readyz", _guarded(readyz))
    app.router.add_get("/metrics", _guarded(metrics_view))
    app.router.add_get("/_meridian/route", _guarded(explain))
    app.router.add_route("*", "/_meridian/{tail:.*}", _not_found)
    app.router.add_route("*", "/{tail:.*}", proxy)  # guards itself (and records the error on its span)
    return app


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"no such Meridian endpoint: {request.path}", kind="meridian_not_found")


def _internal_error(request: web.Request) -> web.Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal error in the edge", kind="meridian_internal")


def _guarded(handler: Handler) -> Handler:
    """A bug answers 500 with a JSON error, never a traceback (a handler, not a middleware: middlewares
    cost every proxied request a wrapper layer)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            return _internal_error(request)

    return guarded


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "edge": request.app[SETTINGS].region})


async def readyz(request: web.Request) -> web.Response:
    feed = request.app[FEED]
    snap = feed.current
    age = feed.age()
    body: dict[str, Any] = {
        "edge": request.app[SETTINGS].region,
        "snapshot_version": snap.version if snap else None,
        "snapshot_age_s": None if age is None else round(age, 3),
        "store_connected": feed.connected,
    }
    routable = snap.routable() if snap else []
    body["routable"] = routable
    body["ready"] = bool(routable)
    return web.json_response(body, status=200 if routable else 503)


async def metrics_view(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def explain(request: web.Request) -> web.Response:
    app = request.app
    raw = request.query.get("ip")
    if raw is None:
        ip = client_ip(
            request.remote, request.headers.getall("X-Forwarded-For", []), app[SETTINGS].trusted_proxies
        )
    else:
        try:
            ip = ipaddress.ip_address(raw.strip())
        except ValueError:
            return _error(
                400, f"query parameter 'ip' is not an IP address: {raw[:64]!r}", kind="meridian_bad_input"
            )
    place = app[GEO].locate(ip)
    snap = app[FEED].current or app[FALLBACK_SNAPSHOT]
    d = _decide(app, place, snap)
    return web.json_response(
        {
            "ip": str(ip) if ip else None,
            "location": {
                "lat": place.location.lat,
                "lon": place.location.lon,
                "country": place.country,
                "continent": place.continent,
                "source": place.source,
            },
            "edge": app[SETTINGS].region,
            "snapshot_version": snap.version if snap.version >= 0 else None,
            "panic": d.panic,
            "choice": d.primary,
            "backup": d.backup,
            "order": list(d.order),
            "pinned": list(d.pinned) if d.pinned is not None else None,
            "scores": [s.as_dict() for s in d.scores],
        }
    )


def _hedge_plan(
    app: web.Application,
    request: web.Request,
    priority: str,
    decision: routing.Decision,
    snap: Snapshot,
    replicas: Callable[[str], list[str]],
) -> HedgePlan | None:
    """Critical requests on hedgeable routes may be hedged to the backup region (budget permitting)."""
    settings = app[SETTINGS]
    if not settings.hedge_enabled or request.path not in app[TOPOLOGY].policy.hedgeable_routes:
        return None
    primary, backup = decision.primary, decision.backup
    if primary is None:
        return None
    budget = app[HEDGE_BUDGET]
    budget.earn()
    windows = app[RESILIENCE].ttfb
    window = windows.setdefault(primary, QuantileWindow(q=settings.hedge_quantile))
    delay = hedge_delay(
        window.estimate(),
        fixed_s=settings.hedge_fixed_delay_s,
        floor_s=settings.hedge_delay_floor_s,
        ceiling_s=settings.hedge_delay_ceiling_s,
        slack=settings.hedge_delay_slack,
    )
    app[METRICS].child(app[METRICS].hedge_delay, primary).set(delay)
    target = None
    util = snap.regions[backup].utilization if backup and backup in snap.regions else 1.0
    if backup and may_hedge(
        backup=backup,
        primary=primary,
        backup_utilization=util,
        max_backup_utilization=settings.hedge_max_backup_utilization,
    ):
        replica = routing.pick_replica(
            replicas(backup), outstanding=app[OBSERVED].outstanding_in(backup), rng=app[RNG]
        )
        if replica is not None:
            target = Attempt(backup, replica, app[REPLICAS][backup][replica], "hedge")
    return HedgePlan(delay_s=delay, target=target, allow=budget.try_spend)


def _decide(app: web.Application, place: ClientPlace, snap: Snapshot) -> routing.Decision:
    """Route one request: the store's view, this edge's passive ejections and failback ramps."""
    now = time.monotonic()
    outliers = app[RESILIENCE].outliers
    failback = app[FAILBACK]
    ejected = outliers.ejected_regions(now)
    excluded = frozenset(r for r in ejected if not outliers.region_admits(r, now)) if ejected else ejected
    share: dict[str, float] | None = None  # only regions below full share: a steady fleet hits the plan cache
    steady = app[STEADY]
    if steady[0] is not snap:  # every region at full share for this snapshot already: nothing can change
        for name, st in snap.regions.items():
            # store-health recoveries ramp and flaps are held down; operator dials and drains apply at once;
            # passive ejections have their own doubling backoff in the breakers
            failback.observe(name, st.health != "down", now)
            f = failback.share(name, now)
            if f != 1.0:
                share = share or {}
                share[name] = f
        steady[0] = snap if share is None else None
    return app[PLANS].route(
        topology=app[TOPOLOGY],
        snapshot=snap,
        client=place.location,
        country=place.country,
        continent=place.continent,
        rng=app[RNG],
        excluded=excluded,
        share=share,
    )


async def proxy(request: web.Request) -> web.StreamResponse:
    app = request.app
    headers = request.headers
    if "traceparent" in headers:
        span = _server_span(app, request, tracing.PROPAGATOR.extract(headers))
    else:
        span = app[SAMPLER].left_out() or _server_span(app, request, None)
    try:
        resp = await _proxy(request, span)
    except web.HTTPException:
        span.end()
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and (
            request.transport is None or request.transport.is_closing()
        ):
            # the client left while we answered: nothing to answer, nothing broke
            app[METRICS].child(app[METRICS].stream_aborts, "none", "client").inc()
            span.set_attribute(tracing.ATTR_OUTCOME, "client went away")
            span.end()
            return web.Response(status=499)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()
        return _internal_error(request)
    if span.is_recording():
        span.set_attribute("http.response.status_code", resp.status)
        if resp.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    span.end()
    return resp


def _server_span(app: web.Application, request: web.Request, parent: Context | None) -> trace.Span:
    return app[TRACER].start_span(
        tracing.SPAN_SERVER,
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": request.method,
            "url.path": request.path,
            tracing.ATTR_EDGE: app[SETTINGS].region,
        },
    )


async def _proxy(request: web.Request, span: trace.Span) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    metrics = app[METRICS]
    edge_hdr = {"X-Meridian-Edge": settings.region}
    priority = PRIORITIES.get(request.headers.get("X-Meridian-Priority", "normal").strip().lower())
    if priority is None:
        metrics.bad_input.labels(what="priority").inc()
        return _error(
            400,
            f"header X-Meridian-Priority must be one of {', '.join(PRIORITIES)}",
            kind="meridian_bad_input",
            headers=edge_hdr,
        )
    span.set_attribute(tracing.ATTR_PRIORITY, priority)
    ip = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), settings.trusted_proxies)
    place = app[GEO].locate(ip)
    if place.country:
        span.set_attribute(tracing.ATTR_CLIENT_COUNTRY, place.country)
    snap = app[FEED].current
    if snap is None:  # never reached the store: route on regions.yaml alone (nearest region first)
        metrics.fallback.inc()
        snap = app[FALLBACK_SNAPSHOT]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.bad_input.labels(what="body_too_large").inc()
        return _error(
            413,
            f"request body exceeds the limit of {settings.max_body_bytes} bytes "
            "(setting MERIDIAN_MAX_BODY_BYTES)",
            kind="meridian_bad_input",
            headers=edge_hdr,
        )
    decision = _decide(app, place, snap)
    if decision.panic:
        metrics.panic.inc()
    if decision.primary is None:
        return _error(503, "no routable region for this client", kind="meridian_no_region", headers=edge_hdr)
    span.set_attribute(tracing.ATTR_REGION, decision.primary)
    if decision.backup:
        span.set_attribute(tracing.ATTR_BACKUP, decision.backup)
    rng = app[RNG]
    urls = app[REPLICAS]
    observed = app[OBSERVED]
    outliers = app[RESILIENCE].outliers

    serving_cache = app[SERVING]

    def replicas(region: str) -> list[str]:
        serving = serving_cache.get(snap, region)
        now = time.monotonic()
        admitted = [r for r in serving if outliers.replica_admits(region, r, now)]
        return admitted or serving

    def next_attempt(tried: list[routing.Tried]) -> Attempt | None:
        t = routing.next_target(
            decision,
            tried,
            replicas=replicas,
            outstanding=observed.outstanding_in,
            rng=rng,
            max_attempts=settings.retry_max_attempts,
        )
        return None if t is None else Attempt(t.region, t.replica, urls[t.region][t.replica], t.kind)

    hedge = _hedge_plan(app, request, priority, decision, snap, replicas) if priority == "critical" else None
    headers = upstream_headers(request.headers, client_ip=str(ip) if ip else None)
    started = time.monotonic()
    resp = await app[FORWARDER].forward(
        request,
        body=body,
        headers=headers,
        next_attempt=next_attempt,
        timeouts=settings.timeouts[priority],
        hedge=hedge,
        parent=span,
    )
    span.set_attribute("meridian.duration_ms", round((time.monotonic() - started) * 1000, 2))
    return resp
