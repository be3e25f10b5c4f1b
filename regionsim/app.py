"""The simulated replica's aiohttp app (I/O): chat and text completions (stream or not, with usage), the
models and adapters it serves, health, vLLM's metrics, fault injection and trace echo headers; the engine
(batching, KV cache, prefix cache, adapter slots) is ``regionsim.engine``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ValidationError

from regionsim.engine import Engine, Job, block_hashes, tokens_of
from regionsim.model import Faults, LatencyModel, Notice, Power

B = TypeVar("B", bound=BaseModel)
WORDS = ("the", "model", "routes", "tokens", "across", "regions", "with", "low", "latency", "and", "care")


@dataclass
class SimStats:
    requests: int = 0
    completed: int = 0
    errors: int = 0
    cancelled: int = 0
    streams_open: int = 0
    rejected: int = 0
    reclaimed_cut: int = 0  # requests cut when the cloud reclaimed the machine
    continued: list[str] = field(
        default_factory=list
    )  # assistant prefixes continued (continue_final_message)
    trace_ids: list[str] = field(default_factory=list)
    priorities: Counter[str] = field(default_factory=Counter)  # X-Meridian-Priority as received


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
    max_concurrency: int  # the engine's maximum batch
    max_queue: int
    default_tokens: int
    rng: random.Random
    models: dict[str, str | None] = field(default_factory=lambda: {"sim-llm": None})  # name -> adapter's base
    kv_tokens: int = 65_536
    max_lora: int = 4
    adapter_load_ms: float = 200.0
    api_key: str | None = None  # as vLLM's --api-key: /v1/* needs Authorization: Bearer <it>
    injected: Faults = field(default_factory=Faults)  # read and set as ``faults``
    down_until: float = 0.0  # monotonic: `down_for_s` ends here
    failures_left: int = 0  # `fail_first` still to answer
    power: Power = field(default_factory=lambda: Power(on=True))
    ready_at: float = 0.0  # monotonic time a switched-on replica serves from (its cold start)
    notice: tuple[Notice, float] | None = None  # an interruption notice and the unix time the machine goes
    reclaim: asyncio.TimerHandle | None = None
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)  # requests being served: cut if it goes
    stats: SimStats = field(default_factory=SimStats)
    rtt_ms: dict[str, float] = field(default_factory=dict)  # calling edge's region -> emulated round trip
    rtt_jitter: float = 0.1
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ttft_seconds: Histogram = field(init=False)
    engine: Engine = field(init=False)
    started: dict[Job, asyncio.Future[None]] = field(default_factory=dict)
    cancelled_event: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.engine = Engine(max_batch=self.max_concurrency, kv_tokens=self.kv_tokens, max_lora=self.max_lora)
        self.registry.register(EngineCollector(self))
        self.ttft_seconds = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ["model_name"],
            buckets=VLLM_TTFT_BUCKETS,
            registry=self.registry,
        ).labels(model_name=self.base_model)

    @property
    def serving(self) -> bool:
        """On and past its cold start (off: it finishes what it runs, takes nothing new)."""
        return self.power.on and time.monotonic() >= self.ready_at

    @property
    def faults(self) -> Faults:
        return self.injected

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """New faults; those that last a while (``fail_first``, ``down_for_s``) count from now."""
        self.injected, self.failures_left = faults, faults.fail_first
        self.down_until = 0.0 if faults.down_for_s is None else time.monotonic() + faults.down_for_s

    def is_down(self) -> bool:
        """Every connection is reset: ``down``, or within ``down_for_s`` of the faults being set."""
        return self.faults.down or time.monotonic() < self.down_until

    @property
    def base_model(self) -> str:
        return next((m for m, base in self.models.items() if base is None), "sim-llm")

    def pump(self) -> None:
        """Start whatever the engine admits now."""
        for job in self.engine.admit():
            fut = self.started.pop(job, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def network(self, request: web.Request) -> None:
        """Emulated network: the round trip between the calling edge's region and this one, with jitter."""
        rtt = self.rtt_ms.get(request.headers.get("X-Meridian-Edge", ""))
        if rtt:
            await asyncio.sleep(rtt * (1 + self.rng.uniform(-self.rtt_jitter, self.rtt_jitter)) / 1000.0)


class EngineCollector(Collector):
    """vLLM's engine gauges at scrape time: load, KV cache, LoRA adapters, prefix cache."""

    def __init__(self, st: SimState) -> None:
        self.st = st

    def collect(self) -> Iterator[Metric]:
        eng, name = self.st.engine, self.st.base_model
        for metric, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.", len(eng.running)),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(eng.waiting)),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", eng.kv_usage),
        ):
            g = GaugeMetricFamily(metric, doc, labels=["model_name"])
            g.add_metric([name], value)
            yield g
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )
        lora.add_metric(
            [str(eng.max_lora), ",".join(eng.waiting_adapters()), ",".join(eng.running_adapters())],
            time.time(),
        )
        yield lora
        for metric, doc, value in (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", 0),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", 1),
        ):
            c = CounterMetricFamily(metric, doc, labels=["model_name"])
            c.add_metric([name], eng.prefix_queries if value == 0 else eng.prefix_hits)
            yield c


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
    prefill_ms_per_1k: float = 40.0,
    max_concurrency: int = 32,
    max_queue: int = 256,
    default_tokens: int = 16,
    seed: int | None = None,
    rtt_ms: dict[str, float] | None = None,
    rtt_jitter: float = 0.1,
    models: dict[str, str | None] | None = None,
    kv_tokens: int = 65_536,
    max_lora: int = 4,
    adapter_load_ms: float = 200.0,
    api_key: str | None = None,
) -> web.Application:
    """One simulated replica. ``models``: the names it serves, each mapped to its base model if it is a LoRA
    adapter (default: one base model, ``sim-llm``)."""
    app = web.Application(client_max_size=8 << 20, middlewares=[_api_key])
    app[STATE] = SimState(
        region=region,
        replica=replica,
        model=LatencyModel(ttft_ms=ttft_ms, per_token_ms=per_token_ms, prefill_ms_per_1k=prefill_ms_per_1k),
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        default_tokens=default_tokens,
        rng=random.Random(seed),
        models=dict(models) if models else {"sim-llm": None},
        kv_tokens=kv_tokens,
        max_lora=max_lora,
        adapter_load_ms=adapter_load_ms,
        api_key=api_key,
        rtt_ms=dict(rtt_ms or {}),
        rtt_jitter=rtt_jitter,
    )
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_post("/v1/responses", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models_list)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", clear_faults)
    app.router.add_get("/_sim/stats", stats)
    app.router.add_get("/_sim/power", power)
    app.router.add_post("/_sim/power", set_power)
    app.router.add_get("/_sim/notice", get_notice)
    app.router.add_post("/_sim/notice", set_notice)
    app.router.add_post("/_sim/match", match)
    app.router.add_delete("/_sim/cache", clear_cache)
    return app


@web.middleware
async def _api_key(request: web.Request, handler: Any) -> web.StreamResponse:
    """vLLM's --api-key: the OpenAI routes answer 401 without the server's own key."""
    key = request.app[STATE].api_key
    given = request.headers.get("Authorization", "")
    if key is not None and request.path.startswith("/v1/") and given != f"Bearer {key}":
        return web.json_response({"error": "Unauthorized"}, status=401)
    response: web.StreamResponse = await handler(request)
    return response


async def _reset(request: web.Request) -> web.Response:
    """`down`: the connection is reset without a response."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=503)


VLLM_ERROR_TYPES = {  # the error type vLLM's OpenAI server names for each status
    400: "BadRequestError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def vllm_error(
    status: int, message: str, kind: str, hdrs: dict[str, str], param: str | None = None
) -> web.Response:
    """An error as vLLM's OpenAI server answers it."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=hdrs)


def prompt_text(payload: dict[str, Any]) -> str:
    """The prompt as the engine sees it: chat messages in order (role, then text), or a completion's."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                if isinstance(content, list):  # content parts: the text ones
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                parts.append(f"<|{m.get('role', '')}|>{content if isinstance(content, str) else ''}")
        return "".join(parts)
    prompt = payload.get("prompt", payload.get("input"))  # a completion's prompt, a response's input
    if isinstance(prompt, list):  # a response's input items
        return "".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in prompt)
    return prompt if isinstance(prompt, str) else ""


def hit_model(st: SimState, payload: dict[str, Any]) -> bool:
    """Whether the faults' ``models`` (None: every one) include the request's model."""
    return st.faults.models is None or payload.get("model", st.base_model) in st.faults.models


def _prefix(payload: dict[str, Any]) -> str | None:
    """The assistant text a request asks to continue (``continue_final_message`` and no generation
    prompt, the last message the assistant's), else None."""
    messages = payload.get("messages")
    if not payload.get("continue_final_message") or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    return content if isinstance(content, str) else None


def _job(st: SimState, payload: dict[str, Any], hdrs: dict[str, str]) -> Job | web.Response:
    """The engine job for a request, or vLLM's error for it."""
    name = payload.get("model", st.base_model)
    if not isinstance(name, str) or name not in st.models:
        return vllm_error(404, f"The model `{name}` does not exist.", "NotFoundError", hdrs, "model")
    tokens = payload.get("max_tokens", payload.get("max_output_tokens", st.default_tokens))
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        return vllm_error(400, "max_tokens must be a positive integer", "BadRequestError", hdrs, "max_tokens")
    text = prompt_text(payload)
    base = st.models[name]
    return Job(
        model=base or name,
        adapter=name if base is not None else None,
        blocks=block_hashes(text),
        prompt_tokens=tokens_of(text),
        max_tokens=min(tokens, 4096),
    )


async def chat(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    await st.network(request)
    arrived = time.monotonic()  # the engine's clock starts here: its TTFT has no network in it
    st.stats.requests += 1
    tid = _trace_id(request)
    st.stats.trace_ids.append(tid)
    del st.stats.trace_ids[:-1000]
    st.stats.priorities[request.headers.get("X-Meridian-Priority", "-")] += 1
    if st.is_down():
        return await _reset(request)
    hdrs = _sim_headers(st, request)
    if not st.serving:
        return vllm_error(
            503, "replica is not serving (switched off or starting)", "ServiceUnavailableError", hdrs
        )
    try:
        payload = await request.json()
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
    except (ValueError, json.JSONDecodeError) as exc:
        return vllm_error(400, f"invalid JSON body: {exc}", "BadRequestError", hdrs)
    if request.path == "/v1/responses" and payload.get("stream"):
        return vllm_error(
            400, "this simulator streams chat and completions only", "BadRequestError", hdrs, "stream"
        )
    refused = await _refused(request, st, payload, hdrs)
    if refused is not None:
        return refused
    prefix = _prefix(payload)
    if prefix is not None:  # vLLM's continue_final_message: the answer goes on from the assistant's text
        if st.faults.reject_prefix:
            said = "continue_final_message is not supported for this model"
            return vllm_error(400, said, "BadRequestError", hdrs, "continue_final_message")
        st.stats.continued.append(prefix)
    job = _job(st, payload, hdrs)
    if isinstance(job, web.Response):
        return job
    too_long = _over_context(st, payload, job, hdrs)
    if too_long is not None:
        return too_long
    if len(st.engine.waiting) >= st.max_queue:
        st.stats.rejected += 1
        return vllm_error(429, "queue full", "TooManyRequestsError", hdrs)
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    st.started[job] = fut
    st.engine.submit(job)
    task = asyncio.current_task()
    if task is not None:
        st.inflight.add(task)
    try:
        st.pump()
        await fut
        return await _generate(request, st, hdrs, payload=payload, job=job, arrived=arrived)
    finally:
        st.inflight.discard(task)
        st.started.pop(job, None)
        st.engine.finish(job)
        st.pump()


async def _refused(
    request: web.Request, st: SimState, payload: dict[str, Any], hdrs: dict[str, str]
) -> web.StreamResponse | None:
    """The injected faults that answer a request for a hit model before any work: a reset, a content-policy
    refusal, an error (``fail_first``, else at ``error_rate``). None: the request goes on."""
    if not hit_model(st, payload):
        return None
    f = st.faults
    if f.reset:
        st.stats.errors += 1
        return await _reset(request)
    if f.content_filter:
        st.stats.errors += 1
        said = "The prompt was filtered by the provider's content policy (simulated)."
        body = {
            "error": {
                "message": said,
                "type": "invalid_request_error",
                "param": "prompt",
                "code": "content_filter",
            }
        }
        return web.json_response(body, status=400, headers=hdrs)
    if st.failures_left > 0 or st.rng.random() < f.error_rate:
        st.failures_left = max(0, st.failures_left - 1)
        st.stats.errors += 1
        if f.retry_after_s is not None:
            hdrs = {**hdrs, "Retry-After": str(f.retry_after_s)}
        kind = VLLM_ERROR_TYPES.get(f.error_status, "InternalServerError")
        return vllm_error(f.error_status, f"simulated {f.error_status}", kind, hdrs)
    return None


def _over_context(
    st: SimState, payload: dict[str, Any], job: Job, hdrs: dict[str, str]
) -> web.Response | None:
    """vLLM's 400 when prompt and max_tokens pass the (injected) ``max_model_len``; else None."""
    limit = st.faults.max_model_len
    if not hit_model(st, payload) or limit is None or job.prompt_tokens + job.max_tokens <= limit:
        return None
    st.stats.errors += 1
    asked = job.prompt_tokens + job.max_tokens
    said = (
        f"This model's maximum context length is {limit} tokens. However, you requested {asked} tokens "
        f"({job.prompt_tokens} in the messages, {job.max_tokens} in the completion). Please reduce the "
        "length of the messages or completion."
    )
    return vllm_error(400, said, "BadRequestError", hdrs)


Shape = Literal["chat", "completion", "response"]
SHAPES: dict[str, Shape] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/responses": "response",
}
ID_PREFIX: dict[Shape, str] = {"chat": "chatcmpl-", "completion": "cmpl-", "response": "resp_"}


def _chunk(shape: Shape, rid: str, created: int, model: str, piece: str | None, finish: str | None) -> bytes:
    """One stream event in the route's shape (``piece`` None: the final, empty one with the finish reason)."""
    choice: dict[str, Any]
    if shape == "completion":
        obj, choice = "text_completion", {"index": 0, "text": piece or "", "logprobs": None}
    else:
        obj, choice = (
            "chat.completion.chunk",
            {"index": 0, "delta": {} if piece is None else {"content": piece}},
        )
    choice["finish_reason"] = finish
    chunk = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _answer(
    shape: Shape, rid: str, created: int, model: str, text: str, finish: str, usage: dict[str, Any]
) -> dict[str, Any]:
    """A whole (non-streamed) answer in the route's shape, as vLLM gives it."""
    head = {"id": rid, "created": created, "model": model}
    if shape == "completion":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**head, "object": "text_completion", "choices": [choice], "usage": usage}
    if shape == "response":
        content = [{"type": "output_text", "text": text, "annotations": []}]
        message = {"type": "message", "id": f"msg_{rid[5:]}", "status": "completed", "role": "assistant"}
        used = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
        cut = finish == "length"
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "model": model,
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "output": [{**message, "content": content}],
            "usage": {**used, "total_tokens": usage["total_tokens"]},
        }
    choice = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": usage}


async def _generate(
    request: web.Request,
    st: SimState,
    hdrs: dict[str, str],
    *,
    payload: dict[str, Any],
    job: Job,
    arrived: float,
) -> web.StreamResponse:
    shape = SHAPES.get(request.path, "chat")
    rid = f"{ID_PREFIX[shape]}{uuid.uuid4().hex[:16]}"
    created = int(time.time())
    model = str(payload.get("model", st.base_model))
    tokens = job.max_tokens
    # the answer ran into the request's own cap (vLLM: "length"); without one it ended by itself
    asked = "max_tokens" in payload or "max_output_tokens" in payload
    finish = "length" if asked else "stop"
    words = [st.rng.choice(WORDS) for _ in range(tokens)]
    usage = {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": job.prompt_tokens + tokens,
        "prompt_tokens_details": {"cached_tokens": job.cached_tokens},
    }
    hdrs = {**hdrs, "X-Sim-Cached-Tokens": str(job.cached_tokens)}
    resp: web.StreamResponse | None = None
    if payload.get("stream", False):  # as vLLM's server: a stream's headers go at once, its events follow
        resp = web.StreamResponse(
            headers={**hdrs, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await resp.prepare(request)
        except ConnectionResetError:  # the client left while the request queued: nothing to answer
            st.stats.cancelled += 1
            return resp
    try:
        prefill = st.model.prefill(job.prompt_tokens - job.cached_tokens)
        load = st.adapter_load_ms / 1000.0 if job.loads_adapter else 0.0
        await asyncio.sleep(st.model.ttft(st.faults, st.rng) + prefill + load)
        st.ttft_seconds.observe(time.monotonic() - arrived)  # queue wait + prefill, as vLLM counts it
        batch = len(st.engine.running)
        if not payload.get("stream", False):
            for _ in range(tokens - 1):
                await asyncio.sleep(st.model.per_token(st.rng, batch=batch, max_batch=st.max_concurrency))
            st.stats.completed += 1
            body = _answer(shape, rid, created, model, " ".join(words), finish, usage)
            return web.json_response(body, headers=hdrs)
        assert resp is not None
        st.stats.streams_open += 1
        try:
            cut = st.faults.cut_after_tokens
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(st.model.per_token(st.rng, batch=batch, max_batch=st.max_concurrency))
                if cut is not None and i >= cut and request.transport is not None:
                    request.transport.abort()  # the machine went mid-answer: the client sees a reset
                    return resp
                if i == st.faults.end_after_tokens:  # a truncation dressed as an end
                    await resp.write_eof()
                    return resp
                if i == st.faults.stall_after_tokens:  # the engine stops sending for a while
                    await asyncio.sleep(st.faults.stall_s)
                if i == st.faults.malformed_event_at:  # a broken event, then the stream goes on
                    await resp.write(b'data: {"id": "' + rid.encode() + b'", "choices": [\n\n')
                await resp.write(_chunk(shape, rid, created, model, word + " ", None))
            await resp.write(_chunk(shape, rid, created, model, None, finish))
            options = payload.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                obj = "text_completion" if shape == "completion" else "chat.completion.chunk"
                final = {"id": rid, "object": obj, "created": created, "model": model}
                final.update(choices=[], usage=usage)
                await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
            if not st.faults.no_done:
                await resp.write(b"data: [DONE]\n\n")
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


EMBEDDING_DIM = 16


def _embedding(text: str) -> list[float]:
    """A deterministic unit vector for ``text`` (equal texts, equal vectors)."""
    raw = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIM * 2).digest()
    v = [int.from_bytes(raw[i : i + 2], "big") / 65535.0 - 0.5 for i in range(0, len(raw), 2)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


async def embeddings(request: web.Request) -> web.Response:
    """``POST /v1/embeddings`` as vLLM answers it: one vector per input, ``float`` or ``base64``
    (little-endian float32, what the official SDK asks for by default)."""
    st = request.app[STATE]
    await st.network(request)
    st.stats.requests += 1
    if st.is_down():
        return await _reset(request)
    hdrs = _sim_headers(st, request)
    try:
        payload = await request.json()
    except (ValueError, json.JSONDecodeError) as exc:
        return vllm_error(400, f"invalid JSON body: {exc}", "BadRequestError", hdrs)
    name = payload.get("model", st.base_model) if isinstance(payload, dict) else None
    if not isinstance(name, str) or name not in st.models:
        return vllm_error(404, f"The model `{name}` does not exist.", "NotFoundError", hdrs, "model")
    raw = payload.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
        return vllm_error(
            400, "input must be a string or a list of strings", "BadRequestError", hdrs, "input"
        )
    b64 = payload.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(inputs):
        vec = _embedding(text)
        value: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    used = sum(tokens_of(t) for t in inputs)
    st.stats.completed += 1
    usage = {"prompt_tokens": used, "total_tokens": used}
    return web.json_response({"object": "list", "data": data, "model": name, "usage": usage}, headers=hdrs)


async def models_list(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.network(request)
    if st.is_down():
        return await _reset(request)
    data = [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "root": name,
            "parent": base,
            "max_model_len": 8192,
        }
        for name, base in st.models.items()
    ]
    return web.json_response({"object": "list", "data": data}, headers=_sim_headers(st, request))


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    await st.network(request)
    if st.is_down() or not st.serving:
        return web.Response(status=503, headers=_sim_headers(st, request))
    return web.json_response({"status": "ok"}, headers=_sim_headers(st, request))


async def metrics(request: web.Request) -> web.Response:
    """vLLM's metric names: load gauges and the time-to-first-token histogram."""
    st = request.app[STATE]
    return web.Response(
        body=generate_latest(st.registry),
        headers={**_sim_headers(st, request), "Content-Type": CONTENT_TYPE_LATEST},
    )


async def _parsed(request: web.Request, kind: type[B], what: str) -> B | web.Response:
    """The body as ``kind``, or the 400 (not JSON) / 422 (naming the fields) to answer instead."""
    try:
        return kind.model_validate(await request.json())
    except json.JSONDecodeError as exc:
        return web.json_response({"error": f"invalid JSON: {exc}"}, status=400)
    except ValidationError as exc:
        fields = [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
        return web.json_response(
            {"error": f"invalid {what}", "fields": fields, "detail": json.loads(exc.json(include_url=False))},
            status=422,
        )


async def set_faults(request: web.Request) -> web.Response:
    st = request.app[STATE]
    faults = await _parsed(request, Faults, "faults")
    if isinstance(faults, web.Response):
        return faults
    st.faults = faults
    return web.json_response(st.faults.model_dump())


async def set_power(request: web.Request) -> web.Response:
    st = request.app[STATE]
    new = await _parsed(request, Power, "power")
    if isinstance(new, web.Response):
        return new
    if new.on and not st.power.on:
        st.ready_at = time.monotonic() + new.cold_start_s
        _forget_notice(st)  # a new machine: no notice, no fault of the one before
        st.faults = Faults()
    st.power = new
    return await power(request)


async def set_notice(request: web.Request) -> web.Response:
    """The cloud's interruption notice for this machine: it goes in ``in_s`` seconds."""
    st = request.app[STATE]
    notice = await _parsed(request, Notice, "notice")
    if isinstance(notice, web.Response):
        return notice
    _forget_notice(st)
    st.notice = (notice, time.time() + notice.in_s)
    st.reclaim = asyncio.get_running_loop().call_later(notice.in_s, _reclaimed, st)
    return await get_notice(request)


async def get_notice(request: web.Request) -> web.Response:
    """As EC2's ``/latest/meta-data/spot/instance-action``: 404 without a notice, else the action and the
    time (UTC) the machine goes."""
    st = request.app[STATE]
    if st.notice is None:
        return web.json_response({"detail": "no interruption notice"}, status=404)
    notice, at = st.notice
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    return web.json_response({"action": notice.action, "time": when, "in_s": round(at - time.time(), 3)})


def _reclaimed(st: SimState) -> None:
    """The machine is gone: off, and whatever it still ran is cut mid-answer."""
    st.power = Power(on=False, capacity=st.power.capacity)
    st.stats.reclaimed_cut += len(st.inflight)
    for task in list(st.inflight):
        task.cancel()


def _forget_notice(st: SimState) -> None:
    if st.reclaim is not None:
        st.reclaim.cancel()
    st.notice, st.reclaim = None, None


async def power(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response(
        {
            **st.power.model_dump(),
            "serving": st.serving,
            "running": len(st.engine.running),
            "waiting": len(st.engine.waiting),
        }
    )


async def match(request: web.Request) -> web.Response:
    """How many of a request body's prompt tokens this replica's prefix cache holds now (for an oracle)."""
    st = request.app[STATE]
    payload = await request.json()
    text = prompt_text(payload if isinstance(payload, dict) else {})
    blocks = st.engine.match(block_hashes(text))
    return web.json_response({"cached_tokens": min(blocks * st.engine.block_tokens, tokens_of(text))})


async def clear_cache(request: web.Request) -> web.Response:
    """Empty the prefix cache and its counters (a benchmark's fresh start)."""
    eng = request.app[STATE].engine
    eng.cache.clear()
    eng.prefix_queries = eng.prefix_hits = 0
    return web.json_response({"cleared": True})


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
            "running": len(st.engine.running),
            "waiting": len(st.engine.waiting),
            "kv_cache_usage": round(st.engine.kv_usage, 4),
            "prefix_cache_queries": st.engine.prefix_queries,
            "prefix_cache_hits": st.engine.prefix_hits,
            "models": sorted(st.models),
            "streams_open": s.streams_open,
            "rejected": s.rejected,
            "reclaimed_cut": s.reclaimed_cut,
            "faults": st.faults.model_dump(),
        }
    )
