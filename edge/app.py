"""The edge's request handling: one ``Edge`` holds the process's state and answers every request that
aiohttp's low-level server hands it (/healthz, /readyz, /metrics, /_meridian/route, and the proxy for every
other path)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from controlplane.redisconn import connect
from controlplane.state import Snapshot, Topology, initial_state
from controlplane.topology import load_topology
from edge import routing, tracing
from edge.budget import RetryBudget
from edge.failback import Failback
from edge.forwarder import Attempt, Forwarder, HedgePlan, Resilience, upstream_headers
from edge.geo import ClientLocator, ClientPlace, GeoLocator
from edge.hedging import HedgeBudget, QuantileWindow, hedge_delay, may_hedge
from edge.metrics import EdgeMetrics
from edge.observed import Observed
from edge.outlier import OutlierDetector, OutlierPolicy
from edge.reporter import Reporter
from edge.settings import EdgeSettings, Priority
from edge.snapshot import SnapshotFeed
from edge.upstream import UpstreamPool

log = logging.getLogger("meridian.edge")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
SHUTDOWN_TASKS_S = 5.0
KEEPALIVE_S = 75.0  # idle client connections (aiohttp's run_app default)
ADMIN_METHODS = frozenset({"GET", "HEAD"})

PRIORITIES: dict[str, Priority] = {"critical": "critical", "normal": "normal", "batch": "batch"}


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


class ConfigError(RuntimeError):
    """The edge cannot start with this configuration (message names the setting)."""


def _error(status: int, message: str, *, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status, headers=headers)


class Edge:
    """One edge process: its state (snapshot feed, GeoIP, breakers, budgets, metrics, tracer, upstream pool)
    and its request handler for aiohttp's low-level server. ``start``/``stop`` run the background tasks."""

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        topology: Topology | None = None,
        tracer_provider: TracerProvider | None = None,
        rng: random.Random | None = None,
    ) -> None:
        topo = topology or load_topology(settings.regions_file)
        home = topo.region(settings.region)
        if home is None:
            raise ConfigError(
                f"MERIDIAN_REGION={settings.region!r} is not a region in {settings.regions_file} "
                f"(known: {', '.join(topo.names)})"
            )
        self._own_provider = tracer_provider is None
        self.provider = tracer_provider or tracing.make_tracer_provider(
            service_name=settings.service_name,
            region=settings.region,
            exporter=settings.tracing_exporter,
        )
        self.settings = settings
        self.topology = topo
        self.feed = feed = SnapshotFeed(
            url=settings.redis_url,
            resync_interval_s=settings.resync_interval_s,
            known_regions=frozenset(topo.names),
            connect=lambda url: connect(url, socket_timeout=2.0),
        )
        self.observed = Observed()
        self.metrics = EdgeMetrics(
            snapshot_age=lambda: -1.0 if (a := feed.age()) is None else a,
            snapshot_version=lambda: float(feed.current.version) if feed.current else -1.0,
            store_connected=lambda: 1.0 if feed.connected else 0.0,
        )
        self.geo = GeoLocator(settings.geoip_db, fallback=home.location)
        self.clients = ClientLocator(self.geo, settings.trusted_proxies)
        self.tracer = self.provider.get_tracer("meridian.edge")
        self.rng = rng or random.Random()
        self.plans = routing.PlanCache()
        self.sampler = tracing.HeadSampler(settings.tracing_sample_ratio, self.rng)
        self.serving = ServingReplicas(topo)
        self.steady: Snapshot | None = None  # the snapshot under which no region is ramping or held down
        self.replica_urls = {r.name: {rep.name: rep.base_url for rep in r.replicas} for r in topo.regions}
        self.resilience = Resilience(
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
            rng=self.rng,
            backoff_base_s=settings.retry_backoff_base_s,
            backoff_cap_s=settings.retry_backoff_cap_s,
            replica_counts={r.name: len(r.replicas) for r in topo.regions},
        )
        self.hedge_budget = HedgeBudget(
            ratio=settings.hedge_budget_ratio,
            burst=settings.hedge_budget_burst,
            tokens=settings.hedge_budget_burst,
        )
        self.metrics.hedge_extra_load.set_function(lambda: self.hedge_budget.extra_load)
        self.failback = Failback(ramp_s=settings.failback_ramp_s, hold_base_s=settings.failback_hold_base_s)
        self.fallback_snapshot = Snapshot(
            version=-1, regions={r.name: initial_state(r, now=0.0) for r in topo.regions}, taken_at=0.0
        )
        self.pool = UpstreamPool(limit=settings.pool_size, keepalive_s=settings.upstream_keepalive_s)
        self.forwarder = Forwarder(
            pool=self.pool,
            tracer=self.tracer,
            observed=self.observed,
            metrics=self.metrics,
            resilience=self.resilience,
            edge_region=settings.region,
        )
        self.reporter: Reporter | None = None
        self._primary: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._admin: dict[str, Handler] = {
            "/healthz": _guarded(self.healthz),
            "/readyz": _guarded(self.readyz),
            "/metrics": _guarded(self.metrics_view),
            "/_meridian/route": _guarded(self.explain),
        }

    async def start(self) -> None:
        """Follow the regional store replica; report observations to the primary when one is configured."""
        settings = self.settings
        self._tasks.append(asyncio.create_task(self.feed.run(), name="snapshot-feed"))
        if settings.redis_primary_url:
            self._primary = connect(settings.redis_primary_url, socket_timeout=1.0)
            self.reporter = Reporter(
                client=self._primary,
                edge=settings.region,
                observed=self.observed,
                interval_s=settings.observation_interval_s,
            )
            self._tasks.append(asyncio.create_task(self.reporter.run(), name="reporter"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_TASKS_S)
            for t in stuck:  # shutting down must finish even if a Redis client swallowed its cancel
                log.warning("background task %s did not stop within %.0f s", t.get_name(), SHUTDOWN_TASKS_S)
        await self.pool.close()
        if self._primary is not None:
            with contextlib.suppress(Exception):
                await self._primary.aclose()
        self.geo.close()
        if self._own_provider:
            self.provider.shutdown()

    def make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """aiohttp's request factory, with the edge's body limit."""
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            task.get_loop(),
            client_max_size=self.settings.max_body_bytes,
        )

    def server(self) -> web.Server:
        """aiohttp's low-level server answering with this edge (inside the running loop)."""
        return web.Server(
            self.handle, request_factory=self.make_request, access_log=None, keepalive_timeout=KEEPALIVE_S
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The low-level server's one handler: Meridian's own endpoints, else the proxy. No router and no
        middleware layer: the proxy is what every request pays for."""
        path = request.path
        admin = self._admin.get(path)
        if admin is not None:
            if request.method not in ADMIN_METHODS:
                return _error(
                    405,
                    f"{path} answers GET only",
                    kind="meridian_method_not_allowed",
                    headers={"Allow": "GET"},
                )
            return await admin(request)
        if path.startswith("/_meridian/"):
            return _error(404, f"no such Meridian endpoint: {path}", kind="meridian_not_found")
        return await self.proxy(request)

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok", "edge": self.settings.region})

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        feed = self.feed
        snap = feed.current
        age = feed.age()
        body: dict[str, Any] = {
            "edge": self.settings.region,
            "snapshot_version": snap.version if snap else None,
            "snapshot_age_s": None if age is None else round(age, 3),
            "store_connected": feed.connected,
        }
        routable = snap.routable() if snap else []
        body["routable"] = routable
        body["ready"] = bool(routable)
        return web.json_response(body, status=200 if routable else 503)

    async def metrics_view(self, request: web.BaseRequest) -> web.Response:
        data = generate_latest(self.metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def explain(self, request: web.BaseRequest) -> web.Response:
        raw = request.query.get("ip")
        if raw is None:
            ip, place = self.clients.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))
        else:
            try:
                ip = ipaddress.ip_address(raw.strip())
            except ValueError:
                return _error(
                    400, f"query parameter 'ip' is not an IP address: {raw[:64]!r}", kind="meridian_bad_input"
                )
            place = self.geo.locate(ip)
        snap = self.feed.current or self.fallback_snapshot
        d = self._decide(place, snap)
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
                "edge": self.settings.region,
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
        self,
        request: web.BaseRequest,
        decision: routing.Decision,
        snap: Snapshot,
        replicas: Callable[[str], list[str]],
    ) -> HedgePlan | None:
        """Critical requests on hedgeable routes may be hedged to the backup region (budget permitting)."""
        settings = self.settings
        if not settings.hedge_enabled or request.path not in self.topology.policy.hedgeable_routes:
            return None
        primary, backup = decision.primary, decision.backup
        if primary is None:
            return None
        budget = self.hedge_budget
        budget.earn()
        windows = self.resilience.ttfb
        window = windows.setdefault(primary, QuantileWindow(q=settings.hedge_quantile))
        delay = hedge_delay(
            window.estimate(),
            fixed_s=settings.hedge_fixed_delay_s,
            floor_s=settings.hedge_delay_floor_s,
            ceiling_s=settings.hedge_delay_ceiling_s,
            slack=settings.hedge_delay_slack,
        )
        self.metrics.child(self.metrics.hedge_delay, primary).set(delay)
        target = None
        util = snap.regions[backup].utilization if backup and backup in snap.regions else 1.0
        if backup and may_hedge(
            backup=backup,
            primary=primary,
            backup_utilization=util,
            max_backup_utilization=settings.hedge_max_backup_utilization,
        ):
            replica = routing.pick_replica(
                replicas(backup), outstanding=self.observed.outstanding_in(backup), rng=self.rng
            )
            if replica is not None:
                target = Attempt(backup, replica, self.replica_urls[backup][replica], "hedge")
        return HedgePlan(delay_s=delay, target=target, allow=budget.try_spend)

    def _decide(self, place: ClientPlace, snap: Snapshot) -> routing.Decision:
        """Route one request: the store's view, this edge's passive ejections and failback ramps."""
        now = time.monotonic()
        outliers = self.resilience.outliers
        ejected = outliers.ejected_regions(now)
        excluded = frozenset(r for r in ejected if not outliers.region_admits(r, now)) if ejected else ejected
        share: dict[str, float] | None = None  # only regions below full share: a steady fleet hits the cache
        if self.steady is not snap:  # every region at full share for this snapshot already: nothing changes
            failback = self.failback
            for name, st in snap.regions.items():
                # store-health recoveries ramp and flaps are held down; operator dials and drains apply at
                # once; passive ejections have their own doubling backoff in the breakers
                failback.observe(name, st.health != "down", now)
                f = failback.share(name, now)
                if f != 1.0:
                    share = share or {}
                    share[name] = f
            self.steady = snap if share is None else None
        return self.plans.route(
            topology=self.topology,
            snapshot=snap,
            client=place.location,
            country=place.country,
            continent=place.continent,
            rng=self.rng,
            excluded=excluded,
            share=share,
        )

    async def proxy(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers
        if "traceparent" in headers:
            span = self._server_span(request, tracing.PROPAGATOR.extract(headers))
        else:
            span = self.sampler.left_out() or self._server_span(request, None)
        try:
            resp = await self._proxy(request, span)
        except web.HTTPException:
            span.end()
            raise
        except Exception as exc:
            if isinstance(exc, ConnectionResetError) and (
                request.transport is None or request.transport.is_closing()
            ):
                # the client left while we answered: nothing to answer, nothing broke
                self.metrics.child(self.metrics.stream_aborts, "none", "client").inc()
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

    def _server_span(self, request: web.BaseRequest, parent: Context | None) -> trace.Span:
        return self.tracer.start_span(
            tracing.SPAN_SERVER,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                tracing.ATTR_EDGE: self.settings.region,
            },
        )

    async def _proxy(self, request: web.BaseRequest, span: trace.Span) -> web.StreamResponse:
        settings = self.settings
        metrics = self.metrics
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
        ip, place = self.clients.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))
        if place.country:
            span.set_attribute(tracing.ATTR_CLIENT_COUNTRY, place.country)
        snap = self.feed.current
        if snap is None:  # never reached the store: route on regions.yaml alone (nearest region first)
            metrics.fallback.inc()
            snap = self.fallback_snapshot
        expect = request.headers.get("Expect")
        if expect is not None and request.version >= HttpVersion11:  # the router's job, had we one
            if expect.lower() != "100-continue":
                metrics.bad_input.labels(what="expect").inc()
                return _error(
                    417,
                    f"header Expect: {expect[:64]!r} is not supported (only 100-continue)",
                    kind="meridian_bad_input",
                    headers=edge_hdr,
                )
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
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
        decision = self._decide(place, snap)
        if decision.panic:
            metrics.panic.inc()
        if decision.primary is None:
            return _error(
                503, "no routable region for this client", kind="meridian_no_region", headers=edge_hdr
            )
        span.set_attribute(tracing.ATTR_REGION, decision.primary)
        if decision.backup:
            span.set_attribute(tracing.ATTR_BACKUP, decision.backup)
        rng = self.rng
        urls = self.replica_urls
        observed = self.observed
        outliers = self.resilience.outliers

        serving_cache = self.serving

        def replicas(region: str) -> list[str]:
            serving = serving_cache.get(snap, region)
            return outliers.admitted(region, serving, time.monotonic()) or serving

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

        hedge = self._hedge_plan(request, decision, snap, replicas) if priority == "critical" else None
        headers = upstream_headers(request.headers, client_ip=str(ip) if ip else None)
        started = time.monotonic()
        resp = await self.forwarder.forward(
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


def _internal_error(request: web.BaseRequest) -> web.Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _error(500, "internal error in the edge", kind="meridian_internal")


def _guarded(handler: Handler) -> Handler:
    """A bug answers 500 with a JSON error, never a traceback (a wrapper per endpoint, not a middleware:
    middlewares cost every proxied request a layer)."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            return _internal_error(request)

    return guarded
