"""The simulator looks like vLLM to the edge: its scheduler (batch, KV cache, prefix cache, adapter slots)
and, over real HTTP, its models, usage fields, errors and metric names."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import ClientPayloadError
from aiohttp.test_utils import TestClient, TestServer

from controlplane.engines import parse_metrics
from regionsim.app import create_app
from regionsim.engine import Engine, Job, block_hashes, tokens_of

SYSTEM = "You are a careful assistant. " * 40  # about 1,100 characters: 17 full blocks


def job(text: str, *, max_tokens: int = 10, adapter: str | None = None) -> Job:
    return Job("base", adapter, block_hashes(text), tokens_of(text), max_tokens)


def test_the_prefix_cache_serves_a_shared_prefix_and_only_it() -> None:
    eng = Engine()
    first, again, other = job(SYSTEM + "q1"), job(SYSTEM + "q2"), job("something else entirely " * 40)
    for j in (first, again, other):
        eng.submit(j)
        assert eng.admit() == [j]
    assert first.cached_tokens == 0 and other.cached_tokens == 0
    assert again.cached_tokens == len(SYSTEM) // 64 * 16  # every full block of the shared system prompt
    assert eng.prefix_hits == again.cached_tokens and eng.prefix_queries > eng.prefix_hits


def test_batch_and_kv_cache_bound_what_runs_and_the_rest_waits_in_order() -> None:
    eng = Engine(max_batch=2, kv_tokens=1000)
    jobs = [job("x" * 400, max_tokens=100) for _ in range(4)]  # 200 tokens each
    for j in jobs:
        eng.submit(j)
    assert eng.admit() == jobs[:2] and len(eng.waiting) == 2  # the batch is full
    eng.finish(jobs[0])
    assert eng.admit() == [jobs[2]]
    big = job("y" * 2400, max_tokens=100)  # 700 tokens: more than the KV cache has left
    eng.finish(jobs[1])
    eng.submit(big)
    assert eng.admit() == [jobs[3]] and eng.admit() == []  # FIFO: big waits for room
    assert eng.kv_usage == 0.4 and list(eng.waiting) == [big]


def test_adapter_slots_load_evict_idle_and_queue_when_all_busy() -> None:
    eng = Engine(max_lora=1)
    a, b = job("p", adapter="a"), job("p", adapter="b")
    eng.submit(a)
    assert eng.admit() == [a] and a.loads_adapter
    eng.submit(b)
    assert eng.admit() == [] and eng.waiting_adapters() == ["b"]  # the only slot is busy
    eng.finish(a)
    assert eng.admit() == [b] and b.loads_adapter and eng.running_adapters() == ["b"]


async def test_models_usage_errors_and_metrics_as_vllm_has_them() -> None:
    app = create_app(
        region="r", replica="x", ttft_ms=1, per_token_ms=0.1, models={"base-7b": None, "tuned": "base-7b"}
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/models")
        models = {m["id"]: m for m in (await resp.json())["data"]}
        assert models["tuned"]["parent"] == "base-7b" and models["base-7b"]["parent"] is None
        body: dict[str, Any] = {"model": "base-7b", "messages": [{"role": "user", "content": SYSTEM}]}
        resp = await client.post("/v1/chat/completions", json={**body, "max_tokens": 3})
        usage = (await resp.json())["usage"]
        assert usage["prompt_tokens"] == tokens_of(f"<|user|>{SYSTEM}") and usage["completion_tokens"] == 3
        resp = await client.post(
            "/v1/chat/completions",
            json={**body, "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}},
        )
        events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
        final = json.loads(events[-2])
        assert events[-1] == "[DONE]" and final["choices"] == [] and final["usage"]["completion_tokens"] == 3
        assert final["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the second time: cached
        resp = await client.post("/v1/chat/completions", json={"model": "nope"})
        err = (await resp.json())["error"]
        assert resp.status == 404 and err["type"] == "NotFoundError" and err["param"] == "model"
        signals = parse_metrics(await (await client.get("/metrics")).text(), at=0.0)
        assert signals.max_lora == 4 and signals.kv_usage == 0.0 and signals.ttft_count == 2


async def test_a_spot_notice_reads_as_ec2_metadata_and_the_machine_goes_when_it_says() -> None:
    app = create_app(region="r", replica="x", ttft_ms=1, per_token_ms=20)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/_sim/notice")).status == 404  # no notice: as EC2 answers
        bad = await client.post("/_sim/notice", json={"in_s": -1})
        assert bad.status == 422 and (await bad.json())["fields"] == ["in_s"]
        body = {
            "model": "sim-llm",
            "stream": True,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "x"}],
        }
        stream = await client.post("/v1/chat/completions", json=body)  # 50 tokens x 20 ms: still running
        await stream.content.readline()
        notice = await client.post("/_sim/notice", json={"in_s": 0.2})
        told = await client.get("/_sim/notice")
        assert notice.status == told.status == 200 and (await told.json())["action"] == "terminate"
        text = b""
        try:
            async for chunk in stream.content.iter_any():
                text += chunk
        except ClientPayloadError:  # cut mid-answer: the machine went
            pass
        assert not text.rstrip().endswith(b"data: [DONE]")
        stats = await (await client.get("/_sim/stats")).json()
        assert stats["reclaimed_cut"] == 1
        assert (await (await client.get("/_sim/power")).json())["serving"] is False
        await client.post("/_sim/power", json={"on": True})  # a new machine: no notice
        assert (await client.get("/_sim/notice")).status == 404
