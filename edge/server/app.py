"""The edge server's lifecycle and dispatch (I/O): one ``Edge`` wires the process's parts together, starts
and stops its background tasks, and dispatches every request aiohttp's low-level server hands it to
Meridian's own endpoints (/healthz, /readyz, /metrics, /_meridian/route) or to the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web, web_response
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from edge.admission.admit import Admission
from edge.admission.geo import ClientLocator
from edge.errors import error, internal_error
from edge.server import build
from edge.server.explain import Explainer
from edge.server.proxy import Proxy
from edge.settings import EdgeSettings
from edge.telemetry import tracing
from edge.telemetry.answer import EdgeRequest
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.observed import Observed
from edge.telemetry.reporter import Reporter, UsageWriter
from edge.telemetry.usage import Ledger
from edge.transport.forwarder import Forwarder
from edge.transport.upstream import UpstreamPool
from fleet.state import Applied, Topology
from fleet.tasks import stop_tasks
from fleet.topology import load_topology

log = logging.getLogger("meridian.edge")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
SHUTDOWN_TASKS_S = 5.0
KEEPALIVE_S = 75.0  # idle client connections (aiohttp's run_app default)
ADMIN_METHODS = frozenset({"GET", "HEAD"})
HTTP_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
SERVER_NAME = "meridian-edge"
# MERIDIAN_ACCESS_LOG: one line per answer (client, request line, status, bytes, seconds, its x-request-id)
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf x-request-id=%{x-request-id}o'


class Edge:
    """One edge process: its state (snapshot feed, GeoIP, breakers, budgets, metrics, tracer, upstream pool)
    and its request handler for aiohttp's low-level server. ``start``/``stop`` run the background tasks."""

    reporter: Reporter | None
    _primary: Redis | None
    _usage_client: Redis | None
    _usage_writer: UsageWriter | None
    _tasks: list[asyncio.Task[None]]
    _cleanups: list[Callable[[], Awaitable[None]]]

    def __init__(
        self,
        settings: EdgeSettings,
        *,
        topology: Topology | None = None,
        tracer_provider: TracerProvider | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topo = topology or load_topology(settings.regions_file)
        home = build.home_region(settings, topo)
        self.rng = rng = rng or random.Random()
        self._own_provider = tracer_provider is None
        self.provider = tracer_provider or build.tracer_provider(settings)
        self.tracer = self.provider.get_tracer("meridian.edge")
        self.feed = build.snapshot_feed(settings, topo, on_refused=self._refused)
        self.fallback_snapshot = build.fallback_snapshot(topo)
        self.observed = Observed()
        self.metrics: EdgeMetrics = build.metrics(self.feed)
        metrics = self.metrics
        self.geo = build.geo(settings, home, metrics)
        self.clients = ClientLocator(self.geo, settings.trusted_proxies)
        self.resilience = build.resilience(settings, topo, rng)
        self.hedging = build.hedging(settings)
        metrics.hedge_extra_load.set_function(lambda: self.hedging.budget.extra_load)
        self.signals = build.signals_feed(settings)
        self.planner = build.planner(settings, topo, self.resilience, self.observed, self.signals, rng)
        self.tenants, self.limiter, self.budgets = build.tenancy(settings, topo, metrics)
        metrics.watch_replicas(topo.names, self.planner.affinity, self.signals.oldest_age)
        self.pool = UpstreamPool(limit=settings.pool_size, keepalive_s=settings.upstream_keepalive_s)
        self.gate = build.gate(settings, self.planner, self.signals, metrics)
        self.ledger = Ledger() if self.tenants is not None else None  # usage is accounted per tenant
        self.waker = build.waker(settings, topo, metrics)
        self.proxy = self._request_path(rng)
        self.rtt = build.rtt(settings, topo, self.pool, self.observed)
        self.reporter = self._primary = self._usage_client = self._usage_writer = None  # opened by start()
        self.explain_url: str | None = None  # where its route explainer listens (set when it serves)
        self._tasks, self._cleanups = [], []
        self._endpoints()

    def _refused(self, reason: str) -> None:
        self.metrics.child(self.metrics.snapshots_refused, reason).inc()

    def _endpoints(self) -> None:
        """Meridian's own endpoints; with an internal listener, clients reach only the probes geo-DNS and
        load balancers need."""
        self._admin: dict[str, Handler] = {
            "/healthz": _guarded(self.healthz),
            "/readyz": _guarded(self.readyz),
            "/metrics": _guarded(self.metrics_view),
            "/_meridian/route": _guarded(
                Explainer(
                    self.settings.region,
                    self.clients,
                    self.geo,
                    self.topology.catalog,
                    self.feed,
                    self.fallback_snapshot,
                    self.planner,
                ).explain
            ),
        }
        self._public_admin = self.settings.internal_port is None
        self._probes = {p: self._admin[p] for p in ("/healthz", "/readyz")}

    def _request_path(self, rng: random.Random) -> Proxy:
        """The forwarder and the proxy in front of it, over the parts built above."""
        settings = self.settings
        self.forwarder = Forwarder(
            pool=self.pool,
            tracer=self.tracer,
            observed=self.observed,
            metrics=self.metrics,
            resilience=self.resilience,
            hedging=self.hedging,
            edge_region=settings.region,
            replica_header=settings.replica_header,
            continuable=build.continuable(self.topology),
        )
        return Proxy(
            settings=settings,
            feed=self.feed,
            fallback=self.fallback_snapshot,
            clients=self.clients,
            planner=self.planner,
            hedging=self.hedging,
            forwarder=self.forwarder,
            metrics=self.metrics,
            spans=tracing.RequestSpans(
                self.tracer,
                tracing.HeadSampler(settings.tracing_sample_ratio, rng),
                settings.tracing_trusted_peers,
                settings.region,
            ),
            hedgeable_routes=self.topology.policy.hedgeable_routes,
            inference_routes=self.topology.policy.inference_routes,
            catalog=self.topology.catalog,
            admission=Admission(
                settings=settings,
                catalog=self.topology.catalog,
                tenants=self.tenants,
                limiter=self.limiter,
                metrics=self.metrics,
                accounting=self.ledger is not None,
                budgets=self.budgets,
            ),
            gate=self.gate,
            ledger=self.ledger,
            waker=self.waker,
        )

    async def start(self) -> None:
        """Follow the regional store replica; report observations to the primary when one is configured."""
        settings = self.settings
        self._tasks.append(asyncio.create_task(self.feed.run(), name="snapshot-feed"))
        self._tasks.append(asyncio.create_task(self.rtt.run(), name="rtt-prober"))
        self._tasks.append(asyncio.create_task(self.signals.run(), name="signals-feed"))
        if self.tenants is not None:
            self._tasks.append(asyncio.create_task(self.tenants.run(), name="tenants-feed"))
        if self.limiter is not None:
            self.limiter.start()
        if self.budgets is not None:
            self.budgets.start()
        if settings.redis_primary_url:
            self._primary = build.connect_store(settings, settings.redis_primary_url, socket_timeout=1.0)
            self.reporter = Reporter(
                client=self._primary,
                edge=settings.region,
                observed=self.observed,
                interval_s=settings.observation_interval_s,
                dropped=self.metrics.observations_dropped,
                applied=self._applied,
                active=self.proxy.active,
            )
            self._tasks.append(asyncio.create_task(self.reporter.run(), name="reporter"))
        if self.ledger is not None:
            self._usage_client = build.connect_store(
                settings, settings.redis_primary_url or settings.redis_url, socket_timeout=1.0
            )
            writer = self._usage_writer = UsageWriter(
                client=self._usage_client,
                edge=settings.region,
                ledger=self.ledger,
                interval_s=settings.observation_interval_s,
                dropped=self.metrics.usage_rows_dropped,
            )
            self._tasks.append(asyncio.create_task(writer.run(), name="usage-writer"))

    def on_stop(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run ``cleanup`` first when the edge stops (e.g. the internal listener)."""
        self._cleanups.append(cleanup)

    async def stop(self) -> None:
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in cleanups:
            await cleanup()
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks, SHUTDOWN_TASKS_S)  # bounded: shutting down always finishes
        if self._usage_writer is not None:  # one last batch, so a clean shutdown loses no usage
            await self._usage_writer.flush()
        await self.gate.close()
        await self.waker.close()
        await self.pool.close()
        for client in (self._primary, self._usage_client, self.waker.client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        if self.budgets is not None:
            await self.budgets.close()
        if self.limiter is not None:
            await self.limiter.close()
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
        """aiohttp's request factory: the edge's request (its id and timings on every answer), with the
        edge's body limit."""
        return EdgeRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            task.get_loop(),
            client_max_size=self.settings.max_body_bytes,
        ).start()

    def server(self) -> web.Server:
        """aiohttp's low-level server answering with this edge (inside the running loop). Responses name the
        edge as their Server, not the Python and aiohttp versions behind it (aiohttp's default)."""
        web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
        access = self.settings.access_log
        return web.Server(
            self.handle,
            request_factory=self.make_request,
            access_log=logging.getLogger("meridian.access") if access else None,
            access_log_format=ACCESS_LOG_FORMAT,
            keepalive_timeout=KEEPALIVE_S,
            handler_cancellation=True,  # a client that leaves cancels its request: held, queued or sent
        )

    def internal_server(self) -> web.Server:
        """aiohttp's low-level server for the internal listener (metrics, route explainer)."""
        return web.Server(self.handle_internal, access_log=None, keepalive_timeout=KEEPALIVE_S)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The low-level server's one handler: Meridian's own endpoints, else the proxy. No router and no
        middleware layer: the proxy is what every request pays for."""
        if request.version not in HTTP_VERSIONS:  # HTTP/0.9, or a text "HTTP/2.0" request line
            resp = error(505, "HTTP/1.0 and HTTP/1.1 only", kind="invalid_request_error")
            resp.force_close()
            return resp
        path = request.path
        admin = self._admin.get(path) if self._public_admin else self._probes.get(path)
        if admin is not None:
            if request.method not in ADMIN_METHODS:
                return error(
                    405,
                    f"{path} answers GET only",
                    kind="meridian_method_not_allowed",
                    headers={"Allow": "GET"},
                )
            return await admin(request)
        if path.startswith("/_meridian/") or path in self._admin:
            return error(404, f"no such Meridian endpoint: {path}", kind="meridian_not_found")
        return await self.proxy.handle(request)

    async def handle_internal(self, request: web.BaseRequest) -> web.StreamResponse:
        """The internal listener: Meridian's own endpoints, nothing proxied."""
        admin = self._admin.get(request.path)
        if admin is None:
            return error(404, f"no such Meridian endpoint: {request.path}", kind="meridian_not_found")
        if request.method not in ADMIN_METHODS:
            return error(405, f"{request.path} answers GET only", kind="meridian_method_not_allowed")
        return await admin(request)

    async def healthz(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok", "edge": self.settings.region})

    def _applied(self) -> Applied | None:
        snap = self.feed.current
        if snap is None:
            return None
        keys = None if self.tenants is None else self.tenants.position
        return Applied(snap.position, self.feed.applied_at, keys, self.explain_url or "")

    async def readyz(self, request: web.BaseRequest) -> web.Response:
        feed = self.feed
        snap = feed.current
        age = feed.age()
        body: dict[str, Any] = {
            "edge": self.settings.region,
            "snapshot_epoch": snap.epoch if snap else None,
            "snapshot_version": snap.version if snap else None,
            "snapshot_age_s": None if age is None else round(age, 3),
            "store_connected": feed.connected,
        }
        routable = snap.routable() if snap else []
        body["routable"] = routable
        body["store_refused"] = feed.refusal  # why the store's latest state was not taken (older, partial)
        body["quarantined"] = sorted(snap.quarantined) if snap else []
        keys = self.tenants is None or self.tenants.loaded.is_set()  # else every client would get 401
        body["api_keys_loaded"] = keys if self.tenants is not None else None
        stale = self.tenants.stale_for() if self.tenants is not None else None
        if stale is not None:  # fail closed: a key revoked meanwhile must not work; clients go elsewhere
            body["api_keys_stale_s"] = round(stale, 1)
            keys = False
        ready = bool(routable) and keys
        body["ready"] = ready
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_view(self, request: web.BaseRequest) -> web.Response:
        data = generate_latest(self.metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _guarded(handler: Handler) -> Handler:
    """A bug answers 500 with a JSON error, never a traceback (a wrapper per endpoint, not a middleware:
    middlewares cost every proxied request a layer)."""

    async def guarded(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            return internal_error(request)

    return guarded
