"""A real local fleet inside a test: redis-server primary + one replica per region (processes), simulated
replicas and edges as aiohttp servers on loopback, the control plane under uvicorn. Nothing is mocked."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from controlplane.api import create_app as create_admin
from controlplane.settings import AdminToken, ControlPlaneSettings
from edge.server.app import Edge
from edge.server.main import serve as serve_edge
from edge.settings import EdgeSettings
from fleet.acl import CONTROL_PLANE, Credentials, edge_user
from fleet.state import Topology
from fleet.topology import load_topology
from meridian.demo import emulated_rtt, local_topology
from meridian.redisproc import RedisServer, SentinelServer, free_port, stop_processes
from regionsim.app import STATE, SimState
from regionsim.app import create_app as create_sim

ROOT = Path(__file__).resolve().parent.parent
ServerFactory = Callable[..., Awaitable[TestServer]]


KEY_SECRET = "test-key-secret-0123456789"  # API-key digests: the control plane's and the edges'


async def wait_for(
    pred: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> float:
    """Poll ``pred`` (a plain or an async predicate) until true; returns the seconds it took; fails after
    ``timeout``. The one poll-with-deadline of the tests."""
    start = time.monotonic()
    while True:
        got = pred()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def edge_counts(metrics_url: str | URL, counter: str, label: str) -> dict[str, float]:
    """An edge's ``meridian_edge_<counter>_total`` by one label, read from its ``/metrics``."""
    name = f"meridian_edge_{counter}_total"
    async with aiohttp.ClientSession() as s, s.get(metrics_url) as m:
        return {
            sample.labels[label]: sample.value
            for family in text_string_to_metric_families(await m.text())
            for sample in family.samples
            if sample.name == name
        }


@dataclass
class ServedEdge:
    """An edge served the way `python -m edge` serves it (aiohttp's low-level server), on a loopback port."""

    edge: Edge
    runner: web.ServerRunner
    port: int

    def make_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        await self.runner.cleanup()
        await self.edge.stop()


@dataclass
class Fleet:
    topology: Topology
    primary: RedisServer
    replicas: dict[str, RedisServer]
    sims: dict[str, dict[str, TestServer]]
    edges: dict[str, ServedEdge] = field(default_factory=dict)
    processes: dict[str, list[ServedEdge]] = field(default_factory=dict)  # every edge process per region
    admin_url: str = ""
    operator_token: str = ""
    viewer_token: str = ""
    pools_token: str = ""  # the pools role: KEDA, node agents
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    sentinels: list[SentinelServer] = field(default_factory=list)
    uvicorn_server: uvicorn.Server | None = None
    uvicorn_task: asyncio.Task[None] | None = None
    admin_app: Any = None
    cp_settings: ControlPlaneSettings | None = None

    def sim(self, region: str, replica: str | None = None) -> SimState:
        servers = self.sims[region]
        server = servers[replica] if replica else next(iter(servers.values()))
        return server.app[STATE]

    def edge_url(self, region: str) -> str:
        return str(self.edges[region].make_url("/"))

    async def primary_waits(self, region: str) -> dict[str, float]:
        """The region's edge's count of requests that waited for the limits authority, by what for."""
        return await edge_counts(self.edges[region].make_url("/metrics"), "limits_primary_waits", "what")

    async def admin(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {token if token is not None else self.operator_token}"}
        hdrs.update(headers or {})
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method,
                self.admin_url + path,
                headers=hdrs,
                data=json.dumps(body) if body is not None and not isinstance(body, bytes | str) else body,
            ) as resp,
        ):
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def tenant_key(
        self,
        limits: Mapping[str, float] | None = None,
        *,
        name: str | None = None,
        priority: str = "normal",
        **fields: Any,
    ) -> tuple[str, str]:
        """A new tenant (``fields``: any other of its fields) and a key for it, taken by every edge process:
        (tenant id, key)."""
        name = name or f"tenant-{secrets.token_hex(4)}"  # tenant names are unique
        body = {"name": name, "limits": limits or {}, "priority": priority, **fields}
        status, tenant = await self.admin("POST", "/v1/tenants", body=body)
        assert status == 201, tenant
        _, issued = await self.admin("POST", f"/v1/tenants/{tenant['id']}/keys")
        key: str = issued["key"]

        async def taken() -> bool:
            for edge in (e for procs in self.processes.values() for e in procs):
                if edge.edge.tenants is None or edge.edge.tenants.resolve(key) is None:
                    return False
            return True

        await wait_for(taken, timeout=3, what="every edge process to take the key")
        return tenant["id"], key

    async def wait_seeded(self) -> None:
        async def seeded() -> bool:
            status, body = await self.admin("GET", "/v1/regions")
            return status == 200 and len(body["regions"]) == len(self.topology.regions)

        await wait_for(seeded, timeout=10, what="control plane to seed the store")

    async def wait_edges_ready(self) -> None:
        async with aiohttp.ClientSession() as s:
            for region in self.edges:

                async def ready(region: str = region) -> bool:
                    async with s.get(self.edge_url(region) + "readyz") as r:
                        return r.status == 200

                await wait_for(ready, timeout=10, what=f"edge {region} ready")

    async def restart_control_plane(self, while_down: Callable[[], Awaitable[None]]) -> None:
        """The control plane stopped (its copy of the store's state goes with it), ``while_down`` run, and
        a new one started on the same port and settings, as a restarted process would be."""
        assert self.uvicorn_server is not None and self.uvicorn_task is not None and self.cp_settings
        self.uvicorn_server.should_exit = True
        await self.uvicorn_task
        await while_down()
        await _serve_control_plane(self, self.cp_settings, port=int(self.admin_url.rsplit(":", 1)[1]))

    async def close(self) -> None:
        """Everything down; then a full garbage collection, so the next test's event loop (every part of a
        fleet shares it) does not pay this one's collection in pauses mid-measurement."""
        try:
            await self._close()
        finally:
            gc.collect()

    async def _close(self) -> None:
        edges = [e for procs in self.processes.values() for e in procs]
        self.edges, self.processes = {}, {}
        await asyncio.gather(*(e.close() for e in edges))
        if self.uvicorn_server is not None and self.uvicorn_task is not None:
            self.uvicorn_server.should_exit = True
            await self.uvicorn_task
            self.uvicorn_task = None
        servers = [*self.replicas.values(), self.primary]
        # SIGKILL: the test is over and its data with it; a SIGTERM'd redis-server first saves (the shipped
        # persistence), ~0.16 s a fleet spent writing files nobody reads
        stop_processes([rs.proc for rs in servers] + [s.proc for s in self.sentinels], signal.SIGKILL)
        for rs in servers:
            rs.proc = None
        for sentinel in self.sentinels:
            sentinel.proc = None


async def start_fleet(
    tmp_path: Path,
    aiohttp_server: ServerFactory,
    *,
    geo_db: Path | None,
    regions: tuple[str, ...] | None = None,
    edges: tuple[str, ...] | None = None,
    probe_interval_s: float = 0.5,
    probe: bool = True,
    control_plane: bool = True,
    sim_kwargs: dict[str, Any] | None = None,
    edge_overrides: dict[str, Any] | None = None,
    sentinels: int = 0,
    network_scale: float = 0.25,
    policy: dict[str, Any] | None = None,
    catalog: bool = False,
    auth: bool = False,
    region_overrides: dict[str, dict[str, Any]] | None = None,
    autoscaling: dict[str, Any] | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None,
    cp_overrides: dict[str, Any] | None = None,
    processes: int = 1,
) -> Fleet:
    """A fleet on loopback. The simulators emulate the network between edges and regions at
    ``network_scale`` of the real round trips (0.25: London-Virginia is 21 ms, not 82) and the policy's
    absolute times with them (switch margin, default service time), so geography still orders the
    regions while tests stay fast; ``policy`` overrides regions.yaml's policy fields. ``catalog``: keep
    regions.yaml's model catalog (the simulators serve what it says); without it the fleet is the open world
    (every replica serves ``sim-llm`` and any model name is forwarded)."""
    base = load_topology(ROOT / "regions.yaml")
    # absolute times in the policy scale with the emulated network, so geography decides here as it would
    scaled = {k: getattr(base.policy, k) * network_scale for k in ("switch_margin_ms", "default_ttft_ms")}
    overrides = {**scaled, **(policy or {})}
    models = {k: {**v.model_dump(), **(model_overrides or {}).get(k, {})} for k, v in base.models.items()}
    models = models if catalog else {}
    base = Topology.model_validate(
        {
            "policy": {**base.policy.model_dump(), **overrides},
            "models": models,
            "regions": [
                {**r.model_dump(), **(region_overrides or {}).get(r.name, {})}
                for r in base.regions
                if regions is None or r.name in regions
            ],
            "autoscaling": {**base.autoscaling.model_dump(), **(autoscaling or {})},
        }
    )
    # the shipped ACL users (fleet.acl), as the demo and Terraform run them: each component logs in as its own
    acl = Credentials(
        control_plane=secrets.token_urlsafe(12),
        replication=secrets.token_urlsafe(12),
        sentinel=secrets.token_urlsafe(12),
        edges={r.name: secrets.token_urlsafe(12) for r in base.regions},
    )
    ops = secrets.token_urlsafe(12)  # the test's own hand on the servers (faults), never a component's
    primary = RedisServer(port=free_port(), workdir=tmp_path / "redis-primary", acl=acl, ops=ops).start()
    replicas = {
        r.name: RedisServer(
            port=free_port(), workdir=tmp_path / f"redis-{r.name}", replicaof=primary.port, acl=acl, ops=ops
        ).start()
        for r in base.regions
    }
    fleet = Fleet(topology=base, primary=primary, replicas=replicas, sims={})
    try:
        for i in range(sentinels):
            fleet.sentinels.append(
                SentinelServer(
                    port=free_port(), workdir=tmp_path / f"sentinel-{i}", primary_port=primary.port, acl=acl
                ).start()
            )
        await _build(
            fleet,
            aiohttp_server,
            geo_db=geo_db,
            edges=edges,
            probe_interval_s=probe_interval_s,
            probe=probe,
            control_plane=control_plane,
            sim_kwargs=sim_kwargs,
            edge_overrides={
                "auth": auth,
                "key_secret": KEY_SECRET if auth else None,
                **(edge_overrides or {}),
            },
            network_scale=network_scale,
            cp_overrides=cp_overrides,
            processes=processes,
        )
    except BaseException:
        await fleet.close()
        raise
    return fleet


async def _build(
    fleet: Fleet,
    aiohttp_server: ServerFactory,
    *,
    geo_db: Path | None,
    edges: tuple[str, ...] | None,
    probe_interval_s: float,
    probe: bool,
    control_plane: bool,
    sim_kwargs: dict[str, Any] | None,
    edge_overrides: dict[str, Any] | None,
    network_scale: float,
    cp_overrides: dict[str, Any] | None = None,
    processes: int = 1,
) -> None:
    base, primary, replicas = fleet.topology, fleet.primary, fleet.replicas
    sims = fleet.sims
    ports: dict[tuple[str, str], int] = {}
    kw = {"ttft_ms": 5.0, "per_token_ms": 1.0, "default_tokens": 4, **(sim_kwargs or {})}
    for i, region in enumerate(base.regions):
        rtt = {edge: ms * network_scale for edge, ms in emulated_rtt(base, region.name).items()}
        for j, rep in enumerate(region.replicas):
            served = base.catalog.served.get((region.name, rep.name), frozenset())
            models = (
                {m: base.catalog.adapter_base(m) for m in sorted(served)} if not base.catalog.open else None
            )
            server = await aiohttp_server(
                create_sim(
                    region=region.name, replica=rep.name, seed=i * 10 + j, rtt_ms=rtt, models=models, **kw
                )
            )
            sims.setdefault(region.name, {})[rep.name] = server
            assert server.port is not None  # started: the kernel gave it a port
            ports[(region.name, rep.name)] = server.port
    topo = Topology.model_validate(local_topology(base, ports))
    fleet.topology = topo
    for rs in [primary, *replicas.values()]:
        rs.wait_ready()
    if control_plane:
        fleet.operator_token = secrets.token_urlsafe(24)
        fleet.viewer_token = secrets.token_urlsafe(24)
        fleet.pools_token = secrets.token_urlsafe(24)
        redis_url = primary.url_for(CONTROL_PLANE)
        if fleet.sentinels:
            hosts = ",".join(f"127.0.0.1:{s.port}" for s in fleet.sentinels)
            assert primary.acl is not None
            redis_url = f"redis+sentinel://{CONTROL_PLANE}:{primary.acl.control_plane}@{hosts}/mymaster"
        cp_settings = ControlPlaneSettings(
            redis_url=redis_url,
            admin_tokens=[
                AdminToken(name="olivia", role="operator", token=fleet.operator_token),
                AdminToken(name="victor", role="viewer", token=fleet.viewer_token),
                AdminToken(name="node-agent", role="pools", token=fleet.pools_token),
            ],
            probe_interval_s=probe_interval_s,
            signals_interval_s=max(0.2, probe_interval_s),
            probe_enabled=probe,
            probe_timeout_s=0.5,
            key_secret=KEY_SECRET,
            **(cp_overrides or {}),
        )
        await _serve_control_plane(fleet, cp_settings, port=free_port())
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(fleet.exporter))
    for name in edges if edges is not None else topo.names:
        options: dict[str, Any] = {
            "region": name,
            "redis_url": replicas[name].url_for(edge_user(name)),
            "redis_primary_url": primary.url_for(edge_user(name)),
            "geoip_db": geo_db,
            "trusted_proxies": ["127.0.0.0/8", "::1/128"],
            "tracing_trusted_peers": ["127.0.0.0/8", "::1/128"],
            "resync_interval_s": 0.5,
            "observation_interval_s": 0.5,
            "rtt_probe_interval_s": 0.5,
            "tracing_sample_ratio": 1.0,
            **(edge_overrides or {}),
        }
        settings = EdgeSettings(**options)
        for _ in range(processes):  # each its own Edge: its own limiter, registration and connections
            edge = Edge(settings, topology=topo, tracer_provider=provider)
            runner = await serve_edge(edge, "127.0.0.1", 0, shutdown_timeout=2.0)  # the kernel picks the port
            process = ServedEdge(edge, runner, runner.addresses[0][1])
            fleet.processes.setdefault(name, []).append(process)
            fleet.edges.setdefault(name, process)
    if control_plane:
        await fleet.wait_edges_ready()


async def _serve_control_plane(fleet: Fleet, settings: ControlPlaneSettings, *, port: int) -> None:
    """The control plane (the admin API, its prober, keeper and intake) served in-process on ``port``."""
    fleet.cp_settings = settings
    fleet.admin_app = create_admin(settings, topology=fleet.topology)
    config = uvicorn.Config(
        fleet.admin_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop="asyncio",
        timeout_graceful_shutdown=2,  # as controlplane.main runs it: open console streams end
    )
    fleet.uvicorn_server = uvicorn.Server(config)
    fleet.uvicorn_task = asyncio.create_task(fleet.uvicorn_server.serve())
    fleet.admin_url = f"http://127.0.0.1:{port}"
    await wait_for(lambda: _started(fleet), timeout=10, what="admin API to start")
    await fleet.wait_seeded()


async def _started(fleet: Fleet) -> bool:
    return bool(fleet.uvicorn_server and fleet.uvicorn_server.started)
