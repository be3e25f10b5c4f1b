"""The simulated cluster's aiohttp app (I/O): chat completions (stream or not), models, health, vLLM-style
metrics, fault injection, bounded concurrency with a queue, and per-request trace echo headers."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from pydantic import ValidationError

from regionsim.model import Faults, LatencyModel

WORDS = ("the", "model", "routes", "tokens", "across", "regions", "with", "low", "latency", "and", "care")


@dataclass
class SimStats:
    requests: int = 0
    completed: int = 0
    errors: int = 0
    cancelled: int = 0
    running: int = 0
    waiting: int = 0
    streams_open: int = 0
    rejected: int = 0
    trace_ids: list[str] = field(default_factory=list)


# vLLM's own buckets for vllm:time_to_first_token_seconds
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


@dataclass
class SimState:
    region: str
    replica: str
    model: LatencyModel
    max_concurrency: int
    max_queue: int
    default_tokens: int
    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    stats: SimStats = field(default_factory=SimStats)
    rtt_ms: dict[str, float] = field(default_factory=dict)  # calling edge's region -> emulated round trip
    rtt_jitter: float = 0.1
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ttft_seconds: Histogram = field(init=False)
    slots: asyncio.Semaphore = field(init=False)
    cancelled_event: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.max_concurrency)
        labels = {"model_name": "sim-llm", "region": self.region, "replica": self.replica}
        running = Gauge(
            "vllm:num_requests_running", "Requests on the GPU", list(labels), registry=self.registry
        )
        running.labels(**labels).set_function(lambda: self.stats.running)
        waiting = Gauge("vllm:num_requests_waiting", "Requests waiting", list(labels), registry=self.registry)
        waiting.labels(**labels).set_function(lambda: self.stats.waiting)
        self.ttft_seconds = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            list(labels),
            buckets=VLLM_TTFT_BUCKETS,
            registry=self.registry,
        ).labels(**labels)

    async def network(self, request: web.Request) -> None:
        """Emulated network: the round trip between the calling edge's region and this one, with jitter."""
        rtt = self.rtt_ms.get(request.headers.get("X-Meridian-Edge", ""))
        if rtt:
            await asyncio.sleep(rtt * (1 + self.rng.uniform(-self.rtt_jitter, self.rtt_jitter)) / 1000.0)


STATE = web.AppKey("sim_state", SimState)


def _trace_id(request: web.Request) -> str:
    parts = request.headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def _sim_headers(st: SimState, request: web.Request) -> dict[str, str]:
    return {"X-Sim-Region": st.region, "X-Sim-Replica": st.replica, "X-Sim-Trace-Id": _trace_id(request)}


def create_app(
    *,
    region: str,
    replica: str,
    ttft_ms: float = 50.0,
    per_token_ms: float = 5.0,
    max_concurrency: int = 32,
    max_queue: int = 256,
    default_tokens: int = 16,
    seed: int | None = None,
    rtt_ms: dict[str, float] | None = None,
    rtt_jitter: float = 0.1,
) -> web.Application:
    app = web.Application(client_max_size=8 << 20)
    app[STATE] = SimState(
        region=region,
        replica=replica,
        model=LatencyModel(ttft_ms=ttft_ms, per_token_ms=per_token_ms),
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        default_tokens=default_tokens,
        rng=random.Random(seed),
        rtt_ms=dict(rtt_ms or {}),
        rtt_jitter=rtt_jitter,
    )
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_get("/_sim/stats", stats)
    return app


async def _reset(request: web.Request) -> web.Response:
    """`down`: the connection is reset without a response."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)


async def chat(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    await st.network(request)
    arrived = time.monotonic()  # the engine's clock starts here: its TTFT has no network in it
    st.stats.requests += 1
    tid = _trace_id(request)
    st.stats.trace_ids.append(tid)
    del st.stats.trace_ids[:-1000]
    if st.faults.down:
        return await _reset(request)
    hdrs = _sim_headers(st, request)
    try:
        payload = await request.json()
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
    except (ValueError, json.JSONDecodeError) as exc:
        return web.json_response(
            {"error": {"message": f"invalid JSON body: {exc}"}}, status=400, headers=hdrs
        )
    stream = bool(payload.get("stream", False))
    tokens = payload.get("max_tokens", st.default_tokens)
    if not isinstance(tokens, int) or tokens < 1:
        return web.json_response(
            {"error": {"message": "max_tokens must be a positive integer"}}, status=400, headers=hdrs
        )
    tokens = min(tokens, 4096)
    if st.rng.random() < st.faults.error_rate:
        st.stats.errors += 1
        return web.json_response({"error": {"message": "simulated overload"}}, status=503, headers=hdrs)
    if st.stats.waiting >= st.max_queue:
        st.stats.rejected += 1
        return web.json_response({"error": {"message": "queue full"}}, status=429, headers=hdrs)
    st.stats.waiting += 1
    try:
        await st.slots.acquire()
    finally:
        st.stats.waiting -= 1
    st.stats.running += 1
    try:
        return await _generate(
            request,
            st,
            hdrs,
            stream=stream,
            tokens=tokens,
            model=str(payload.get("model", "sim-llm")),
            arrived=arrived,
        )
    finally:
        st.stats.running -= 1
        st.slots.release()


async def _generate(
    request: web.Request,
    st: SimState,
    hdrs: dict[str, str],
    *,
    stream: bool,
    tokens: int,
    model: str,
    arrived: float,
) -> web.StreamResponse:
    rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
    created = int(time.time())
    words = [st.rng.choice(WORDS) for _ in range(tokens)]
    try:
        await asyncio.sleep(st.model.ttft(st.faults, st.rng))
        st.ttft_seconds.observe(time.monotonic() - arrived)  # queue wait + prefill, as vLLM counts it
        if not stream:
            for _ in range(tokens - 1):
                await asyncio.sleep(st.model.per_token(st.rng))
            st.stats.completed += 1
            return web.json_response(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": " ".join(words)},
                        }
                    ],
                    "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
                },
                headers=hdrs,
            )
        resp = web.StreamResponse(
            headers={**hdrs, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        st.stats.streams_open += 1
        try:
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(st.model.per_token(st.rng))
                chunk = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
                }
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            done = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            await resp.write(b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n")
            await resp.write_eof()
        finally:
            st.stats.streams_open -= 1
        st.stats.completed += 1
        return resp
    except asyncio.CancelledError:
        st.stats.cancelled += 1
        st.cancelled_event.set()
        raise
    except ConnectionResetError:  # the caller hung up mid-stream: counted, not an error of ours
        st.stats.cancelled += 1
        st.cancelled_event.set()
        return web.Response(status=499)


async def models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.network(request)
    if st.faults.down:
        return await _reset(request)
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": "sim-llm", "object": "model", "owned_by": f"meridian-sim/{st.region}"}],
        },
        headers=_sim_headers(st, request),
    )


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.network(request)
    if st.faults.down:
        return web.Response(status=503, headers=_sim_headers(st, request))
    return web.json_response({"status": "ok"}, headers=_sim_headers(st, request))


async def metrics(request: web.Request) -> web.Response:
    """vLLM's metric names: load gauges and the time-to-first-token histogram."""
    st = request.app[STATE]
    return web.Response(
        body=generate_latest(st.registry),
        headers={**_sim_headers(st, request), "Content-Type": CONTENT_TYPE_LATEST},
    )


async def set_faults(request: web.Request) -> web.Response:
    st = request.app[STATE]
    try:
        body: Any = await request.json()
        st.faults = Faults.model_validate(body)
    except json.JSONDecodeError as exc:
        return web.json_response({"error": f"invalid JSON: {exc}"}, status=400)
    except ValidationError as exc:
        fields = [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
        return web.json_response(
            {"error": "invalid faults", "fields": fields, "detail": json.loads(exc.json(include_url=False))},
            status=422,
        )
    return web.json_response(st.faults.model_dump())


async def clear_faults(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.faults = Faults()
    return web.json_response(st.faults.model_dump())


async def stats(request: web.Request) -> web.Response:
    st = request.app[STATE]
    s = st.stats
    return web.json_response(
        {
            "region": st.region,
            "replica": st.replica,
            "requests": s.requests,
            "completed": s.completed,
            "errors": s.errors,
            "cancelled": s.cancelled,
            "running": s.running,
            "waiting": s.waiting,
            "streams_open": s.streams_open,
            "rejected": s.rejected,
            "faults": st.faults.model_dump(),
        }
    )
