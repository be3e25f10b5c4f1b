"""Benchmark helpers: start `meridian demo` as a subprocess on free ports, and drive load through edges."""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

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


# --- shared by bench/proxy and bench/gateways: the reference proxy, the load, the CPU it costs -------------


def ensure_tools() -> None:
    if shutil.which("nginx") and shutil.which("wrk"):
        return
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nginx-light", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def nginx_conf(
    work: Path,
    *,
    listen: int,
    body: str | None = None,
    upstream: int | None = None,
    also: tuple[int, ...] = (),
) -> Path:
    """nginx, one worker: answering ``body`` itself, or proxying to ``upstream`` (HTTP/1.1 keep-alive to it,
    buffering off, so a stream passes event by event)."""
    conf = work / f"nginx-{listen}.conf"
    if body is not None:
        location = f'location / {{ default_type text/plain; return 200 "{body}"; }}'
        location += f' location /v1/ {{ default_type text/plain; return 200 "{body}"; }}'
    else:
        location = (
            'location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; '
            "proxy_buffering off; }"
        )
    pool = f"upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}" if upstream else ""
    listens = "".join(f"listen 127.0.0.1:{x} reuseport; " for x in (listen, *also))
    conf.write_text(
        f"worker_processes 1; daemon off; pid {work}/nginx-{listen}.pid; "
        f"error_log {work}/nginx-{listen}.err warn;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; keepalive_requests 100000; {pool} server {{ {listens}{location} }} }}\n"
    )
    return conf


def wrk(url: str, *, conns: int, duration: int, script: Path) -> tuple[float, int]:
    """(req/s, requests completed)"""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  warning: {url}: {non2xx.group(1)} non-2xx responses", file=sys.stderr)
    return (float(m.group(1)) if m else 0.0), (int(n.group(1)) if n else 0)


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system seconds of a process (``children``: and of its children, a gateway forking workers)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *(proc.children(recursive=True) if children else ())):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def add_worktree(rev: str, where: Path) -> Path:
    """A temporary git worktree of revision ``rev`` at ``where`` (a ``--baseline``); an unknown revision stops
    the benchmark with git's own words, not a traceback."""
    made = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise SystemExit(f"--baseline {rev}: {made.stderr.strip() or 'git worktree add failed'}")
    return where


def remove_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False)


def local_regions(tree: Path, out: Path, upstream_ports: tuple[int, ...], *, catalog: bool) -> Path:
    """``tree``'s regions.yaml with every replica pointed at the local upstream, each at a port of its own
    (one server listening on all of them: a replica URL may appear once). Without ``catalog`` the model
    catalog is left out: GET /v1/models is then proxied (with a catalog the edge answers it itself)."""
    topo = yaml.safe_load((tree / "regions.yaml").read_text())
    if not catalog:
        topo.pop("models", None)
        for region in topo["regions"]:
            region.pop("serves", None)
    ports = iter(upstream_ports)
    for region in topo["regions"]:
        for rep in region["replicas"]:
            rep["url"] = f"http://127.0.0.1:{next(ports)}"
    out.write_text(yaml.safe_dump(topo))
    return out
