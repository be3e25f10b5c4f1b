"""The edge server's lifecycle and dispatch (I/O): one ``Edge`` wires the process's parts together, starts
and stops its background tasks, and dispatches every request aiohttp's low-level server hands it to
Meridian's own endpoints (/healthz, /readyz, /metrics, /_meridian/route) or to the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
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
from edge.admission.budgets import Budgets
from edge.admission.fairqueue import BandLimits
from edge.admission.gate import Gate
from edge.admission.geo import ClientLocator, ClientPlace, GeoLocator
from edge.admission.limiter import Limiter
from edge.admission.request import Inference, read
from edge.admission.tenants import TenantsFeed
from edge.admission.wake import Waker
from edge.errors import error, internal_error
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector, OutlierPolicy
from edge.routing.planner import Planner, ReplicaTuning, Wanted
from edge.routing.ranking import AttemptPlan
from edge.routing.replicas import PickPolicy
from edge.routing.signals import SignalsFeed
from edge.routing.snapshot import SnapshotFeed
from edge.server.proxy import Proxy
from edge.settings import EdgeSettings
from edge.telemetry import tracing
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.observed import Observed
from edge.telemetry.reporter import Reporter, UsageWriter
from edge.telemetry.usage import Ledger
from edge.transport.forwarder import Forwarder, Resilience
from edge.transport.hedging import HedgeBudget, HedgePolicy
from edge.transport.retry_budget import RetryBudget
from edge.transport.rtt import RttProber
from edge.transport.upstream import UpstreamPool
from fleet.redisconn import connect
from fleet.state import Snapshot, Topology, initial_state
from fleet.topology import load_topology

log = logging.getLogger("meridian.edge")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
SHUTDOWN_TASKS_S = 5.0
KEEPALIVE_S = 75.0  # idle client connections (aiohttp's run_app default)
ADMIN_METHODS = frozenset({"GET", "HEAD"})
HTTP_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
SERVER_NAME = "meridian-edge"


class ConfigError(RuntimeError):
    """The edge cannot start with this configuration (message names the setting)."""


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
        self.rng = rng = rng or random.Random()
        self.feed = feed = SnapshotFeed(
            url=settings.redis_url,
            resync_interval_s=settings.resync_interval_s,
            topology=topo.names,
            connect=lambda url: _connect(settings, url, socket_timeout=2.0),
            on_refused=lambda reason: self.metrics.child(self.metrics.snapshots_refused, reason).inc(),
        )
        self.observed = Observed()
        self.metrics = EdgeMetrics(
            snapshot_age=lambda: -1.0 if (a := feed.age()) is None else a,
            snapshot_version=lambda: float(feed.current.version) if feed.current else -1.0,
            store_connected=lambda: 1.0 if feed.connected else 0.0,
        )
        metrics = self.metrics
        self.geo = GeoLocator(
            settings.geoip_db,
            fallback=home.location,
            on_result=lambda result: metrics.child(metrics.geoip_lookups, result).inc(),
        )
        self.clients = ClientLocator(self.geo, settings.trusted_proxies)
        self.tracer = self.provider.get_tracer("meridian.edge")
        self.resilience = _resilience(settings, topo, rng)
        self.hedging = _hedging(settings)
        self.metrics.hedge_extra_load.set_function(lambda: self.hedging.budget.extra_load)
        self.signals = SignalsFeed(
            url=settings.redis_url,
            poll_s=settings.signals_poll_s,
            connect=lambda url: _connect(settings, url, socket_timeout=2.0),
        )
        self.planner = _planner(settings, topo, self.resilience, self.observed, self.signals, rng)
        secret = settings.key_secret
        self.tenants = None
        self.limiter: Limiter | None = None
        self.budgets: Budgets | None = None
        if settings.auth and secret is not None:
            self.tenants = TenantsFeed(
                url=settings.redis_url,
                poll_s=settings.tenants_poll_s,
                max_age_s=settings.tenants_max_age_s,
                secret=secret.get_secret_value().encode(),
                connect=lambda url: _connect(settings, url, socket_timeout=2.0),
                primary_url=settings.redis_primary_url,
            )
            # tenant limits are leased from the primary (the replica cannot take writes)
            primary = settings.redis_primary_url or settings.redis_url
            edges = len(topo.regions) * settings.workers
            failures = metrics.limits_primary_failures
            self.limiter = Limiter(
                client=_connect(settings, primary, socket_timeout=1.0),
                edges=edges,
                on_failure=lambda kind: failures.labels(kind=kind).inc(),
            )
            self.budgets = Budgets(self.limiter)
        metrics.watch_replicas(topo.names, self.planner.affinity, self.signals.oldest_age)
        self.fallback_snapshot = Snapshot(
            version=-1, regions={r.name: initial_state(r, now=0.0) for r in topo.regions}, taken_at=0.0
        )
        self.pool = UpstreamPool(limit=settings.pool_size, keepalive_s=settings.upstream_keepalive_s)
        self.gate = Gate(
            load=self.planner.pool_load,
            signals=self.signals.get,
            metrics=metrics,
            bands={b: BandLimits(q.size, q.wait_s) for b, q in settings.queue.items()},
            max_waiting=settings.saturation_waiting,
        )
        self.ledger = Ledger() if self.tenants is not None else None  # usage is accounted per tenant
        self._wake_client = _connect(
            settings, settings.redis_primary_url or settings.redis_url, socket_timeout=1.0
        )
        self.waker = Waker(
            topology=topo,
            edge=settings.region,
            hold_s=settings.wake_hold_s,
            max_held=settings.wake_max_held,
            metrics=metrics,
            client=self._wake_client,
        )
        self.proxy = self._request_path(rng)
        self.rtt = RttProber(
            pool=self.pool,
            topology=topo,
            edge=settings.region,
            observed=self.observed,
            interval_s=settings.rtt_probe_interval_s,
            timeout_s=settings.rtt_probe_timeout_s,
        )
        self.reporter: Reporter | None = None
        self._primary: Redis | None = None
        self._usage_client: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._endpoints()

    def _endpoints(self) -> None:
        """Meridian's own endpoints; with an internal listener, clients reach only the probes geo-DNS and
        load balancers need."""
        self._admin: dict[str, Handler] = {
            "/healthz": _guarded(self.healthz),
            "/readyz": _guarded(self.readyz),
            "/metrics": _guarded(self.metrics_view),
            "/_meridian/route": _guarded(self.explain),
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
            tracer=self.tracer,
            sampler=tracing.HeadSampler(settings.tracing_sample_ratio, rng),
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
            self._primary = _connect(settings, settings.redis_primary_url, socket_timeout=1.0)
            self.reporter = Reporter(
                client=self._primary,
                edge=settings.region,
                observed=self.observed,
                interval_s=settings.observation_interval_s,
                dropped=self.metrics.observations_dropped,
            )
            self._tasks.append(asyncio.create_task(self.reporter.run(), name="reporter"))
        if self.ledger is not None:
            self._usage_client = _connect(
                settings, settings.redis_primary_url or settings.redis_url, socket_timeout=1.0
            )
            writer = UsageWriter(
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
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=SHUTDOWN_TASKS_S)
            for t in stuck:  # shutting down must finish even if a Redis client swallowed its cancel
                log.warning("background task %s did not stop within %.0f s", t.get_name(), SHUTDOWN_TASKS_S)
        await self.gate.close()
        await self.waker.close()
        await self.pool.close()
        for client in (self._primary, self._usage_client, self._wake_client):
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
        """aiohttp's low-level server answering with this edge (inside the running loop). Responses name the
        edge as their Server, not the Python and aiohttp versions behind it (aiohttp's default)."""
        web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
        return web.Server(
            self.handle,
            request_factory=self.make_request,
            access_log=None,
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

    async def explain(self, request: web.BaseRequest) -> web.Response:
        """Where a request would go: ``ip`` (default: the caller), ``model``, and an affinity key
        (``key``: a prompt_cache_key, or ``session``: an X-Session-Id)."""
        raw = request.query.get("ip")
        if raw is None:
            ip, place = self.clients.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))
        else:
            try:
                ip = ipaddress.ip_address(raw.strip())
            except ValueError:
                return error(
                    400, f"query parameter 'ip' is not an IP address: {raw[:64]!r}", kind="meridian_bad_input"
                )
            place = self.geo.locate(ip)
        q = request.query
        asked = {"model": q.get("model"), "prompt_cache_key": q.get("key")}
        facts = read(json.dumps({k: v for k, v in asked.items() if v}).encode(), q.get("session"))
        catalog = self.topology.catalog
        if facts.model is not None and not catalog.known(facts.model):
            message = f"unknown model {facts.model[:200]!r}"
            return error(404, message, kind="invalid_request_error", code="model_not_found")
        model = None if catalog.open else facts.model
        wanted = Wanted(model, facts.key, model if model and catalog.adapter_base(model) else None)
        snap = self.feed.current or self.fallback_snapshot
        plan = self.planner.plan(place, snap, wanted)
        return web.json_response(
            {**self._explained(ip, place, snap, plan), **self._choice(facts, plan, snap)}
        )

    def _choice(self, facts: Inference, plan: AttemptPlan, snap: Snapshot) -> dict[str, object]:
        """The explainer's model filter, affinity key, replica chosen and why, and every candidate replica
        with its engine signals and their age."""
        model = None if self.topology.catalog.open else facts.model
        first = plan.next()
        serving = None if model is None else sorted(self.planner.cache(snap).regions_serving(model))
        key = None if facts.key is None else {"source": facts.key_source, "key": f"{facts.key:016x}"}
        chosen = (
            None if first is None else {"region": first.region, "replica": first.replica, "why": first.why}
        )
        return {
            "model": None if model is None else {"requested": model, "regions_serving": serving},
            "affinity": key,
            "replica": chosen,
            "candidates": [
                {**c, "replicas": self.planner.describe(str(c["region"]), model)} for c in plan.candidates()
            ],
        }

    def _explained(
        self, ip: object, place: ClientPlace, snap: Snapshot, plan: AttemptPlan
    ) -> dict[str, object]:
        """The route explainer's answer: where the client is, the end-to-end estimate per region (client to
        this edge + this edge to the region + service), the choice, and whether DNS sent it here wrongly."""
        d = plan.decision
        view = self.planner.client_view(place)
        located = place.source == "geoip"
        scores = []
        for s in d.scores:
            row = s.as_dict()
            if located and row["score_ms"] is not None:
                row["end_to_end_ms"] = round(view.client_edge_ms + s.score_ms, 2)
            scores.append(row)
        return {
            "ip": str(ip) if ip else None,
            "location": {
                "lat": place.location.lat,
                "lon": place.location.lon,
                "country": place.country,
                "continent": place.continent,
                "source": place.source,
            },
            "edge": self.settings.region,
            "client_edge_ms": round(view.client_edge_ms, 2) if located else None,
            "misrouted": {"nearer_edge": view.misrouted, "nearer_edge_ms": round(view.nearest_edge_ms, 2)}
            if located and view.misrouted
            else None,
            "snapshot_version": snap.version if snap.version >= 0 else None,
            "panic": d.panic,
            "choice": d.primary,
            "backup": d.backup,
            "order": list(d.order),
            "pinned": list(d.pinned) if d.pinned is not None else None,
            "scores": scores,
            "candidates": plan.candidates(),
        }


def _connect(settings: EdgeSettings, url: str, *, socket_timeout: float) -> Redis:
    """A client for one of this edge's Redis URLs, with the ACL user from the settings when set."""
    password = settings.redis_password
    return connect(
        url,
        socket_timeout=socket_timeout,
        username=settings.redis_username,
        password=None if password is None else password.get_secret_value(),
    )


def _planner(
    settings: EdgeSettings,
    topo: Topology,
    resilience: Resilience,
    observed: Observed,
    signals: SignalsFeed,
    rng: random.Random,
) -> Planner:
    return Planner(
        topology=topo,
        edge=settings.region,
        outliers=resilience.outliers,
        failback=Failback(ramp_s=settings.failback_ramp_s, hold_base_s=settings.failback_hold_base_s),
        observed=observed,
        rng=rng,
        clock=time.monotonic,
        max_attempts=settings.retry_max_attempts,
        signals=signals.get,
        tuning=ReplicaTuning(
            pick=PickPolicy(
                max_waiting=settings.saturation_waiting,
                max_kv=settings.saturation_kv_cache,
                load_factor=settings.affinity_load_factor,
            ),
            signal_max_age_s=settings.signal_max_age_s,
            slow_start_s=settings.slow_start_s,
        ),
    )


def _resilience(settings: EdgeSettings, topo: Topology, rng: random.Random) -> Resilience:
    return Resilience(
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
        rng=rng,
        backoff_base_s=settings.retry_backoff_base_s,
        backoff_cap_s=settings.retry_backoff_cap_s,
        replica_counts={r.name: len(r.replicas) for r in topo.regions},
    )


def _hedging(settings: EdgeSettings) -> HedgePolicy:
    return HedgePolicy(
        quantile=settings.hedge_quantile,
        fixed_delay_s=settings.hedge_fixed_delay_s,
        floor_s=settings.hedge_delay_floor_s,
        ceiling_s=settings.hedge_delay_ceiling_s,
        slack=settings.hedge_delay_slack,
        max_backup_utilization=settings.hedge_max_backup_utilization,
        budget=HedgeBudget(
            ratio=settings.hedge_budget_ratio,
            burst=settings.hedge_budget_burst,
            tokens=settings.hedge_budget_burst,
        ),
    )


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
