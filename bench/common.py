"""Benchmark helpers: start `meridian demo` as a subprocess on free ports, and drive load through edges."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from meridian.redisproc import free_block

ROOT = Path(__file__).resolve().parent.parent
PLACES = {  # client IPs located by the GeoLite2 City database the demo uses
    "london": ("eu-west-1", "81.2.69.142"),
    "new_york_area": ("us-east-1", "24.48.0.1"),
    "california": ("us-west-2", "151.101.0.1"),
    "singapore": ("ap-southeast-1", "202.166.0.1"),
}


@contextmanager
def demo_fleet(extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "meridian", "demo", "--base-port", str(free_block())],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=60):
            raise SystemExit("demo not ready within 60 s")
        yield json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def key(ready: dict[str, Any]) -> dict[str, str]:
    """The demo's client API key as a request header."""
    return {"Authorization": f"Bearer {ready['api_key']}"}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@contextmanager
def single_edge(
    upstream_url: str, work: Path, *, port: int, redis_port: int, extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Redis seeded with regions.yaml (every replica URL -> ``upstream_url``, no model catalog) and one edge
    in eu-west-1."""
    import asyncio
    import time

    import yaml
    from _maxminddb_geolite2 import geolite2_database

    from controlplane.store import StateStore
    from fleet.redisconn import connect
    from fleet.topology import load_topology
    from meridian.redisproc import RedisServer, spawn, stop_process

    topo = yaml.safe_load((ROOT / "regions.yaml").read_text())
    topo.pop("models", None)  # the open world: whatever the upstream serves is forwarded
    for region in topo["regions"]:
        region.pop("serves", None)
        for rep in region["replicas"]:
            rep["url"] = upstream_url
    regions_file = work / "regions.bench.yaml"
    regions_file.write_text(yaml.safe_dump(topo))
    redis = RedisServer(port=redis_port, workdir=work / "redis").start()
    redis.wait_ready()
    edge = None
    try:

        async def seed() -> None:
            client = connect(redis.url)
            await StateStore(client).seed(load_topology(regions_file), now=time.time())
            await client.aclose()

        asyncio.run(seed())
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")},
            "MERIDIAN_REGION": "eu-west-1",
            "MERIDIAN_REGIONS_FILE": str(regions_file),
            "MERIDIAN_REDIS_URL": redis.url,
            "MERIDIAN_HOST": "127.0.0.1",
            "MERIDIAN_PORT": str(port),
            "MERIDIAN_GEOIP_DB": geolite2_database(),
            "MERIDIAN_TRUSTED_PROXIES": "127.0.0.0/8",
            "MERIDIAN_LOG_LEVEL": "WARNING",
            "MERIDIAN_AUTH": "false",  # measured without API keys unless a bench says otherwise
            **(extra_env or {}),
        }
        edge = spawn([sys.executable, "-m", "edge"], env=env)
        yield edge
    finally:
        stop_process(edge)
        redis.stop()
