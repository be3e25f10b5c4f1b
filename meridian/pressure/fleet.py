"""The pressure tests' fleet (I/O): a real local fleet — Redis primary and a replica per region with the
shipped ACL users, simulated regions with engines, the control plane with the autoscaler on the simulator
backend, an edge per region — started fresh for each scenario from one topology, scaled to this machine;
and the operator's and the cloud's hands on it (tenants and keys, pools, the audit log, faults, notices)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from fleet.state import Topology
from fleet.topology import load_topology
from meridian.demo import Fleet, geoip_db
from meridian.redisproc import free_block

ROOT = Path(__file__).resolve().parents[2]
MODEL = "pressure-llm"
COLD_MODEL = "cold-llm"  # a pool at zero, served nowhere else: scale from zero has nothing to fall back to
HOME = {"london": "eu-west-1", "new-york": "us-east-1"}  # each population's nearest edge and region
CLIENT_IP = {"london": "81.2.69.142", "new-york": "12.0.1.1"}  # where GeoLite2 places them
SLOTS = 6  # replica slots per region in the main pool


@dataclass(frozen=True)
class Scale:
    """How the seed's figures map onto this machine: simulated time runs ``time`` times faster (a 60 s
    criterion is 60 / time s here), engine capacity is the simulator's (per replica: ``batch`` requests at
    once, ``tokens`` tokens each at ``per_token_ms``), offered load is stated as multiples of the measured
    saturation rate of one replica."""

    time: float = 10.0
    batch: int = 4
    tokens: int = 20
    ttft_ms: float = 20.0
    per_token_ms: float = 10.0
    cold_start_s: float = 0.3  # a replica's start (a GPU node's minutes, compressed)

    def s(self, seed_seconds: float) -> float:
        """A duration of the seed's in this run's seconds."""
        return seed_seconds / self.time

    def settings(self) -> dict[str, str]:
        """The components' own durations, scaled like everything else (production value / time)."""
        real = {
            "MERIDIAN_PROBE_INTERVAL_S": 5.0,
            "MERIDIAN_SIGNALS_INTERVAL_S": 2.5,
            "MERIDIAN_RESYNC_INTERVAL_S": 5.0,
            "MERIDIAN_SLOW_START_S": 30.0,
            "MERIDIAN_FAILBACK_RAMP_S": 30.0,
            "MERIDIAN_FAILBACK_HOLD_BASE_S": 5.0,
        }
        return {k: f"{self.s(v):g}" for k, v in real.items()}


@dataclass
class Knobs:
    """What a scenario (or a negative control) changes in the fleet it starts."""

    autoscaler: str = "simulator"
    probe: bool = True  # off: regions are never marked down (no failover by health)
    spot_notices: bool = True
    scale_down_window_s: float | None = None  # None: the seed's 300 s, scaled
    cost_ceiling_hour: float | None = None
    main_min: int = 1
    spot_share: float = 0.7
    edge_env: dict[str, str] = field(default_factory=dict)


def topology(scale: Scale, knobs: Knobs) -> dict[str, Any]:
    """Two regions (Dublin, Virginia) with a main pool each; Dublin also holds a pool at zero."""
    base = load_topology(ROOT / "regions.yaml")
    regions = []
    for r in base.regions:
        if r.name not in HOME.values():
            continue
        short = r.name.replace("-", "")[:5]
        slots = [{"name": f"{short}-{i}", "url": f"http://{short}-{i}.internal:8000"} for i in range(SLOTS)]
        pools = [_pool(MODEL, scale, knobs.main_min, SLOTS, knobs.spot_share)]
        if r.name == "eu-west-1":
            cold = [
                {"name": f"{short}-cold-{i}", "url": f"http://{short}-c{i}.internal:8000"} for i in range(2)
            ]
            for slot in cold:
                slot["serves"] = [COLD_MODEL]  # type: ignore[assignment]
            for slot in slots:
                slot["serves"] = [MODEL]  # type: ignore[assignment]
            slots += cold
            pools.append({**_pool(COLD_MODEL, scale, 0, 2, 0.0), "scale_to_zero": True})
        regions.append(
            {
                **r.model_dump(mode="json", exclude={"replicas", "pools", "serves", "cost_ceiling_hour"}),
                "serves": [MODEL, COLD_MODEL] if r.name == "eu-west-1" else [MODEL],
                "replicas": slots,
                "pools": pools,
            }
        )
    prices = {"input_per_mtok": 0.1, "output_per_mtok": 0.2, "context_length": 32768}
    window = knobs.scale_down_window_s if knobs.scale_down_window_s is not None else scale.s(300)
    return {
        "policy": {
            **base.policy.model_dump(mode="json"),
            "pins": {},
            "switch_hold_s": scale.s(base.policy.switch_hold_s),
            "settle_hold_s": scale.s(base.policy.settle_hold_s),
        },
        "models": {MODEL: prices, COLD_MODEL: prices},
        "autoscaling": {
            "interval_s": 0.5,
            "smoothing": 1.0,
            "scale_up_period_s": scale.s(15),
            "scale_down_stabilization_s": window,
            "scale_down_period_s": scale.s(60),
            "panic_window_s": scale.s(60),
            "replace_down_after_s": scale.s(60),
            "cost_ceiling_hour": knobs.cost_ceiling_hour,
        },
        "regions": regions,
    }


def _pool(model: str, scale: Scale, low: int, high: int, spot_share: float) -> dict[str, Any]:
    return {
        "model": model,
        "min_replicas": low,
        "max_replicas": high,
        "target": {"metric": "concurrency", "value": scale.batch - 1},  # of an engine batch: headroom
        "on_demand_base": min(1, low) if low else 0,
        "max_spot_share": spot_share,
        "price_on_demand_hour": 4.0,
        "price_spot_hour": 1.5,
        "cold_start_s": scale.cold_start_s,
    }


def beyond_minimum(topo: Topology) -> frozenset[str]:
    """Each pool's slots past its minimum: their machines start switched off (a fleet at its minimum, as
    after a quiet night; the autoscaler takes over the slots that are on)."""
    off = set()
    for region in topo.regions:
        for pool in region.pools:
            slots = [r.name for r in region.replicas if topo.catalog.serves(region.name, r.name, pool.model)]
            off.update(slots[pool.min_replicas :])
    return frozenset(off)


@dataclass
class Running:
    """A started fleet: its ready line, and the operator's token."""

    fleet: Fleet
    ready: dict[str, Any]
    topo: Topology
    tenant_ids: dict[str, str] = field(default_factory=dict)  # name -> id, of the tenants made here

    @property
    def admin(self) -> str:
        return str(self.ready["admin"]["url"])

    @property
    def token(self) -> str:
        return str(self.ready["admin"]["token"])

    def edge(self, population: str) -> str:
        return str(self.ready["edges"][HOME[population]])

    def slots(self, region: str, model: str = MODEL) -> dict[str, str]:
        """Replica name -> its simulator URL, for ``region``'s slots serving ``model``."""
        urls = self.ready["regions"][region]["replicas"]
        region_topo = next(r for r in self.topo.regions if r.name == region)
        return {
            rep.name: url
            for rep, url in zip(region_topo.replicas, urls, strict=True)
            if model in self.topo.catalog.served.get((region, rep.name), frozenset({model}))
        }

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.admin + path, json=body, headers=headers) as r,
        ):
            text = await r.text()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {text[:300]}")
            return json.loads(text) if text else None

    async def tenant(self, name: str, **limits: float) -> str:
        """A tenant with ``limits`` (none: far above any load here) and its key; returns the key once every
        edge takes it."""
        tenant = await self.call(
            "POST",
            "/v1/tenants",
            {
                "name": name,
                "limits": limits or {"rpm": 10_000_000},
                "max_priority": "critical",
                "reason": "pressure",
            },
        )
        self.tenant_ids[name] = str(tenant["id"])
        key = str((await self.call("POST", f"/v1/tenants/{tenant['id']}/keys"))["key"])
        async with aiohttp.ClientSession() as s:
            for url in self.ready["edges"].values():
                for _ in range(200):
                    async with s.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}) as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.05)
        return key

    async def warm(self, timeout: float = 20.0) -> None:
        """Until the autoscaler has published every pool with a load read from its engines, and every
        region is up: a fleet that has been running, not one that just started."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                pools = await self.call("GET", "/v1/pools")
                regions = (await self.call("GET", "/v1/regions"))["regions"]
                listed = pools if isinstance(pools, list) else pools.get("pools", [])
                if (
                    len(listed) == sum(len(r.pools) for r in self.topo.regions)
                    and all(p.get("load") is not None for p in listed)
                    and all(r.get("health") == "up" for r in regions)
                ):
                    return
            except RuntimeError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the fleet did not settle within {timeout:g} s")
            await asyncio.sleep(0.2)

    async def pool(self, region: str, model: str = MODEL) -> dict[str, Any]:
        return dict(await self.call("GET", f"/v1/pools/{region}/{model}"))

    async def audit(self) -> list[dict[str, Any]]:
        return list((await self.call("GET", "/v1/audit?limit=500"))["entries"])

    async def region(self, name: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/v1/regions/{name}"))

    async def metrics(self) -> str:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as s, s.get(self.admin + "/metrics", headers=headers) as r:
            return await r.text()

    async def sim_stats(self, url: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(url + "/_sim/stats") as r:
            return dict(await r.json())

    async def sim_power(self, url: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(url + "/_sim/power") as r:
            return dict(await r.json())

    async def sim(self, url: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s, s.post(url + path, json=body) as r:
            return await r.json()


@contextlib.asynccontextmanager
async def started(
    scale: Scale,
    knobs: Knobs,
    log_file: Path,
    *,
    base: int | None = None,
    via: Callable[[str, str], str] | None = None,
    ops: str | None = None,
) -> AsyncIterator[Running]:
    """A fresh fleet for one scenario; stopped (every process, every file) when the scenario ends. ``base``:
    its base port (see ``meridian.demo.PortPlan``); ``via``: how a component dials a Redis link; ``ops``: a
    password for a fault campaign's own user on the primary (none: the fleet's users only)."""
    data = topology(scale, knobs)
    workdir = Path(tempfile.mkdtemp(prefix="meridian-pressure-"))
    config = workdir / "regions.yaml"
    import yaml

    config.write_text(yaml.safe_dump(data, sort_keys=False))
    topo = load_topology(config)
    env = {
        "MERIDIAN_AUTOSCALER": knobs.autoscaler,
        "MERIDIAN_PROBE_ENABLED": "true" if knobs.probe else "false",
        "MERIDIAN_SPOT_NOTICES": "true" if knobs.spot_notices else "false",
        "MERIDIAN_GEOIP_DB": geoip_db(),
        "MERIDIAN_LOG_LEVEL": "WARNING",
        **scale.settings(),
        **knobs.edge_env,
    }
    sim_args = (
        "--max-concurrency",
        str(scale.batch),
        "--max-queue",
        "256",
        "--ttft-ms",
        str(scale.ttft_ms),
        "--per-token-ms",
        str(scale.per_token_ms),
    )
    fleet = Fleet(
        topo,
        base if base is not None else free_block(80),
        workdir,
        sim_args=sim_args,
        sims_off=beyond_minimum(topo),
        env=env,
        log_file=log_file,
        via=via,
        ops=ops,
    )
    stop = threading.Event()
    try:
        ready = await asyncio.to_thread(fleet.start)
        await asyncio.to_thread(fleet.wait_ready, ready, stop)
        running = Running(fleet, ready, topo)
        if knobs.autoscaler != "off":
            await running.warm()
        yield running
    finally:
        stop.set()
        await asyncio.to_thread(fleet.stop)
        shutil.rmtree(workdir, ignore_errors=True)
