"""The operator console (I/O): its page and assets, shipped in the package (``controlplane/console/``, no
build step, no CDN) and served under a strict Content-Security-Policy; who a token belongs to; and one
server-sent-events stream per browser with the topology, the regions, their traffic, the audit log and the
switch runs as they change (the console's writes go through the admin API, with If-Match and a reason)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import aiohttp
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException, ServiceUnavailableException, ValidationException
from litestar.params import Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from redis.exceptions import RedisError

from controlplane.auth import User, operator_guard, staff_guard
from controlplane.runs import Runs
from controlplane.schemas import AUTHENTICATED, CANCEL, EXPLAIN, STAFF, AuditPage
from controlplane.store import StateStore, StoreError, StoreUnavailable
from fleet.keys import (
    KEY_SIGNALS,
    active_key,
    applied_key,
    cancel_key,
    traffic_key,
)
from fleet.state import Topology
from fleet.usage import minute_of

log = logging.getLogger("meridian.console")

ASSETS_DIR = Path(__file__).parent / "console"
ASSETS = {  # name -> content type: nothing else under /console is served
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "world.svg": "image/svg+xml",
    "icon.svg": "image/svg+xml",
}
# no inline script or style, nothing from elsewhere, no framing, no forms posting anywhere
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TICK_S = 1.0  # the stream reads the store this often and sends what changed
HEARTBEAT_S = 15.0  # a comment at least this often, so proxies keep an idle stream open
AUDIT_ROWS = 200
EXPLAIN_S = 2.0  # each edge's explainer: this long at most


@get("/console", exclude_from_auth=True, include_in_schema=False)
async def console_page() -> Response[bytes]:
    return _asset("index.html")


@get("/console/{asset:str}", exclude_from_auth=True, include_in_schema=False)
async def console_asset(asset: str) -> Response[bytes]:
    return _asset(asset)


def _asset(name: str) -> Response[bytes]:
    if name not in ASSETS:
        raise NotFoundException(f"no console asset '{name}'")
    body = (ASSETS_DIR / name).read_bytes()
    return Response(body, media_type=ASSETS[name], headers=HEADERS)


@get(
    "/v1/session",
    summary="Who the presented token belongs to: its name and role",
    responses={401: AUTHENTICATED[401]},
)
async def session(request: Request[User, str, State]) -> dict[str, str]:
    return {"name": request.user.name, "role": request.user.role}


@get(
    "/v1/events",
    guards=[staff_guard],
    media_type="text/event-stream",
    responses=STAFF,
    summary="Server-sent events for the console: topology (once), regions, traffic (requests per region in "
    "the last minute), audit (the newest rows) and store (reachable or not), each when it changes",
)
async def events(state: State) -> ServerSentEvent:
    runs = getattr(state, "runs", None)
    changes = _changes(state.store, state.topology, runs)
    return ServerSentEvent(changes, headers={"Cache-Control": "no-store"})


async def _changes(
    store: StateStore, topo: Topology, runs: Runs | None
) -> AsyncIterator[ServerSentEventMessage]:
    """The stream: each kind of news sent when it differs from what this browser last got."""
    yield _message("topology", _topology(topo))
    last: dict[str, str] = {}
    beat = time.monotonic()
    while True:
        news = await _read(store, topo, runs)
        for kind, body in news.items():
            data = json.dumps(body, separators=(",", ":"), sort_keys=True)
            if last.get(kind) != data:
                last[kind] = data
                beat = time.monotonic()
                yield ServerSentEventMessage(data=data, event=kind)
        if time.monotonic() - beat >= HEARTBEAT_S:
            beat = time.monotonic()
            yield ServerSentEventMessage(comment="heartbeat")
        await asyncio.sleep(TICK_S)


async def _read(store: StateStore, topo: Topology, runs: Runs | None) -> dict[str, Any]:
    try:
        version, regions, invalid = await store.all()
        audit = await store.audit_log(limit=AUDIT_ROWS)
        traffic = await _traffic(store, topo)
        switches = await runs.all() if runs is not None else []
        pools, signals = await _fleet(store)
        active = await _active(store, topo)
        flows = await _flows(store, topo)
    except (StoreError, RedisError, OSError) as exc:
        return {"store": {"ok": False, "error": str(exc)}}
    listed = [regions[n].model_dump(mode="json") for n in topo.names if n in regions]
    listed += [{"name": n, "invalid": invalid[n]} for n in topo.names if n in invalid]
    return {
        "store": {"ok": True},
        "regions": {"version": version, "regions": listed},
        "traffic": traffic,
        "audit": AuditPage.model_validate({"entries": audit}).model_dump(mode="json"),
        "pools": pools,
        "active": active,
        "flows": flows,
        "signals": signals,
        "runs": {
            "edges": len(topo.names),
            "runs": [
                {**r.model_dump(mode="json"), "recovery_s": r.recovery_s(len(topo.names))} for r in switches
            ],
        },
    }


async def _traffic(store: StateStore, topo: Topology) -> dict[str, int]:
    """Requests each region answered over the last minute, as every edge counted them (its usage rows)."""
    now = minute_of(time.time())
    keys = [(r, traffic_key(e, r, m)) for r in topo.names for e in topo.names for m in (now - 1, now)]
    try:
        async with store.redis.pipeline(transaction=False) as pipe:
            for _, key in keys:
                pipe.hgetall(key)
            rows = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(str(exc)) from exc
    out = dict.fromkeys(topo.names, 0)
    for (region, _), row in zip(keys, rows, strict=True):
        for field, value in row.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            if name.startswith("requests|"):
                out[region] += int(value)
    return out


async def _fleet(store: StateStore) -> tuple[list[Any], dict[str, Any]]:
    """Every autoscaled pool as the autoscaler last published it, and each replica's engine signals
    ("region/replica" -> running, waiting, KV cache use, when scraped)."""
    raw_pools = await store.pools()
    raw_signals = await store.redis.hgetall(KEY_SIGNALS)
    pools = sorted(raw_pools.values(), key=lambda p: (p["region"], p["model"]))
    signals = {}
    for k, v in raw_signals.items():
        s = json.loads(v)
        name = k.decode() if isinstance(k, bytes) else str(k)
        signals[name] = {f: s.get(f) for f in ("running", "waiting", "kv_usage", "at")}
    return pools, signals


async def _flows(store: StateStore, topo: Topology) -> dict[str, dict[str, int]]:
    """Requests answered over the last minute from each client continent by each region, as the edges
    counted them in their observation batches (``from:<continent>``)."""
    out: dict[str, dict[str, int]] = {}
    for row in await store.observations_since(topo.names, time.time() - 60):
        region = row.get("region", "")
        for key, value in row.items():
            if key.startswith("from:") and region:
                into = out.setdefault(key.removeprefix("from:"), {})
                into[region] = into.get(region, 0) + int(float(value))
    return out


async def _active(store: StateStore, topo: Topology) -> dict[str, list[Any]]:
    """Each edge's requests in flight as it last published them (none: an edge that stopped publishing)."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for edge in topo.names:
            pipe.hget(active_key(edge), "data")
        rows = await pipe.execute()
    return {edge: json.loads(raw) if raw else [] for edge, raw in zip(topo.names, rows, strict=True)}


@post(
    "/v1/active/{edge:str}/{key:str}/cancel",
    guards=[operator_guard],
    status_code=202,
    summary="Cancel a request in flight at an edge (the edge ends it within its report interval, ~1 s)",
    responses=CANCEL,
)
async def cancel_request(
    edge: str,
    key: Annotated[str, Parameter(pattern=r"^[0-9a-f]{1,16}$", description="the request's key at its edge")],
    request: Request[User, str, State],
    state: State,
) -> dict[str, Any]:
    topo: Topology = state.topology
    if edge not in topo.names:
        raise NotFoundException(f"unknown edge '{edge}'")
    store: StateStore = state.store
    now = time.time()
    try:
        async with store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(cancel_key(edge), key, int(now * 1000))
            pipe.pexpire(cancel_key(edge), 60_000)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        raise ServiceUnavailableException("state store primary unavailable: try again") from exc
    log.info("%s cancels request %s at edge %s", request.user.name, key, edge)
    return {"edge": edge, "key": key, "asked_at": now}


def _topology(topo: Topology) -> dict[str, Any]:
    return {
        "regions": [
            {"name": r.name, "lat": r.location.lat, "lon": r.location.lon, "replicas": len(r.replicas)}
            for r in topo.regions
        ]
    }


def _message(kind: str, body: Any) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps(body, separators=(",", ":")), event=kind)


@get(
    "/v1/explain",
    guards=[staff_guard],
    summary="Each edge's route explainer for one client: where a request from ``ip`` (for ``model``, with "
    "``session`` as its affinity key) would go from that edge, and why",
    responses=EXPLAIN,
)
async def explain(
    state: State,
    ip: Annotated[
        str,
        Parameter(
            description="the client's address, e.g. 81.2.69.142 (London); IPv6 too",
            schema_extra={"format": "ipv4"},
        ),
    ],
    model: Annotated[str | None, Parameter(required=False, description="the model it asks for")] = None,
    session: Annotated[str | None, Parameter(required=False, description="its X-Session-Id")] = None,
    what_if: Annotated[
        str | None,
        Parameter(
            required=False,
            pattern=r"^[a-z0-9-]{1,63}=(100|[1-9]?[0-9])$",
            description="region=dial, e.g. eu-west-1=0: each edge also says what it would choose then",
        ),
    ] = None,
) -> dict[str, Any]:
    try:
        ipaddress.ip_address(ip.strip())
    except ValueError:
        raise ValidationException(
            f"ip is not an IP address: {ip[:64]!r}", extra=[{"key": "ip", "source": "query"}]
        ) from None
    topo: Topology = state.topology
    store: StateStore = state.store
    async with store.redis.pipeline(transaction=False) as pipe:
        for edge in topo.names:
            pipe.hget(applied_key(edge), "explain")
        urls = [(u.decode() if isinstance(u, bytes) else u) or None for u in await pipe.execute()]
    asked = (("ip", ip.strip()), ("model", model), ("session", session), ("what_if", what_if))
    query = {k: v for k, v in asked if v}
    timeout = aiohttp.ClientTimeout(total=EXPLAIN_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        answers = await asyncio.gather(*(_ask(http, url, query) for url in urls))
    return {"ip": ip.strip(), "edges": dict(zip(topo.names, answers, strict=True))}


async def _ask(http: aiohttp.ClientSession, url: str | None, query: dict[str, str]) -> dict[str, Any]:
    """One edge's explainer at the address it published (its scheme, host and port: the path is ours)."""
    parts = urlsplit(url) if url else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        return {"error": "this edge has not said where its explainer listens"}
    try:
        async with http.get(f"{parts.scheme}://{parts.netloc}/_meridian/route", params=query) as r:
            return {"status": r.status, "answer": await r.json(content_type=None)}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": f"the edge's explainer did not answer: {type(exc).__name__}"}


ROUTES: list[Any] = [console_page, console_asset, session, events, cancel_request, explain]
