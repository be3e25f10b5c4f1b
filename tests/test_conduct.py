"""How the edge conducts a request through the faults clients actually meet (issue: "route around failed
requests"): real edges, Redis and simulators; each test says what the client got, which replica saw how many
attempts, and that the edge serves a healthy request after."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from regionsim.model import Faults
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

MODEL = "llama-3.1-8b-instruct"
FIRST_TOKEN_S = 0.5
IDLE_S = 1.0
# every priority's first-token and idle limits short, so a slow or stalled replica is given up on quickly
TIMEOUTS = {p: {"first_token_s": FIRST_TOKEN_S, "idle_s": IDLE_S} for p in ("critical", "normal", "batch")}


async def conduct_fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path, **overrides: Any) -> Fleet:
    """eu-west-1 alone (two replicas), the catalog, fast simulators, short first-token and idle limits."""
    return await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        catalog=True,
        regions=("eu-west-1",),
        sim_kwargs={"ttft_ms": 1.0},
        edge_overrides={"timeouts": TIMEOUTS},
        **overrides,
    )


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await conduct_fleet(tmp_path, serve, geo_db)
    try:
        yield f
    finally:
        await f.close()


async def post(fleet: Fleet, **fields: Any) -> tuple[int, dict[str, str], bytes, float]:
    """A chat request from London at the eu-west-1 edge (``fields`` over a 3-token "hi"): status, headers,
    body and how long it took."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **fields}
    headers = {"X-Forwarded-For": CLIENT_IP["london"]}
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers) as r,
    ):
        data = await r.read()
        return r.status, dict(r.headers), data, time.monotonic() - started


async def stream(fleet: Fleet, tokens: int = 5) -> tuple[int, dict[str, str], bytes, float]:
    return await post(fleet, max_tokens=tokens, stream=True)


def replicas(fleet: Fleet) -> dict[str, Any]:
    return {name: fleet.sim("eu-west-1", name) for name in fleet.sims["eu-west-1"]}


def stream_events(data: bytes) -> list[dict[str, Any]]:
    """A stream's JSON events, in order."""
    return [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]


async def cut_where_it_goes(
    fleet: Fleet, *, after: int, other: Faults | None = None
) -> tuple[dict[str, Any], str]:
    """The eu-west-1 replica this prompt goes to (affinity keeps it there) breaks its streams off after
    ``after`` tokens, and its other replica gets ``other``: (the replicas, the other's name)."""
    _, headers, _, _ = await stream(fleet)
    cutting = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[cutting].faults = Faults(cut_after_tokens=after)
    (rest,) = set(sims) - {cutting}
    if other is not None:
        sims[rest].faults = other
    return sims, rest


@pytest.mark.parametrize("late_s", [3.0, 600.0], ids=["slow first token", "silent"])
async def test_a_stream_without_its_first_token_in_time_is_served_by_another_replica(
    fleet: Fleet, late_s: float
) -> None:
    """A streaming server sends its headers at once; a first token later than the first-token limit (or
    none at all) abandons the attempt, and the other replica answers within the limit plus its own time."""
    status, headers, _, _ = await stream(fleet)
    assert status == 200
    slow = headers["X-Meridian-Replica"]  # where this prompt goes (affinity keeps it there)
    sims = replicas(fleet)
    sims[slow].faults = Faults(extra_latency_ms=late_s * 1000)
    before = {name: sim.stats.requests for name, sim in sims.items()}
    status, headers, data, took = await stream(fleet)
    assert status == 200 and b"data: [DONE]" in data, data[-200:]
    assert headers["X-Meridian-Replica"] != slow
    assert took < FIRST_TOKEN_S + 1.0, took  # not the slow replica's 3 s, nor a silent one's forever
    seen = {name: sim.stats.requests - before[name] for name, sim in sims.items()}
    assert seen[slow] == 1 and sum(seen.values()) == 2, seen  # abandoned once, not retried on the same route
    sims[slow].faults = Faults()
    status, _, data, _ = await stream(fleet)
    assert status == 200 and b"data: [DONE]" in data  # and the edge serves a healthy request after


async def chat(fleet: Fleet) -> tuple[int, dict[str, str]]:
    status, headers, _, _ = await post(fleet)
    return status, headers


async def test_a_429_with_retry_after_keeps_new_requests_off_that_replica_until_it_passes(
    fleet: Fleet,
) -> None:
    """A replica that answers 429 Retry-After: 2 is left alone for 2 s: the request that met it is served by
    the other replica, and so is every request after it (the throttled one sees no tight loop); once the 2 s
    are over it is asked again."""
    status, headers = await chat(fleet)
    assert status == 200
    busy = headers["X-Meridian-Replica"]  # where this prompt goes (affinity keeps it there)
    sims = replicas(fleet)
    sims[busy].faults = Faults(error_rate=1.0, error_status=429, retry_after_s=2)
    before = sims[busy].stats.requests
    held_at = time.monotonic()
    served = [await chat(fleet) for _ in range(5)]
    assert all(s == 200 and h["X-Meridian-Replica"] != busy for s, h in served), served
    assert time.monotonic() - held_at < 2.0  # all within the replica's Retry-After ...
    assert sims[busy].stats.requests - before == 1  # ... which it was asked once
    sims[busy].faults = Faults()

    async def back() -> bool:
        return (await chat(fleet))[1]["X-Meridian-Replica"] == busy

    await wait_for(back, timeout=5, what="the replica asked again after its Retry-After")


async def test_a_prompt_over_the_models_context_goes_to_a_fallback_with_room_for_it(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """A 400 context_length_exceeded is the model's, not the replica's: never retried on another replica of
    it; the request goes to the first fallback whose context is larger, and the answer names that model.
    Where no fallback has more room, the client gets the region's own 400 and its reason."""
    small, large = "qwen2.5-7b-instruct", "llama-3.1-8b-instruct"  # 32,768 and 131,072 tokens
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        catalog=True,
        regions=("eu-west-1",),
        sim_kwargs={"ttft_ms": 1.0},
        model_overrides={small: {"fallbacks": [large]}},
    )
    try:
        sims = replicas(f)
        for sim in sims.values():  # the small model's engines take 64 tokens (a stand-in for 32,768)
            sim.faults = Faults(max_model_len=64, models=[small])
        before = sum(sim.stats.requests for sim in sims.values())
        body = {"model": small, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
        headers = {"X-Forwarded-For": CLIENT_IP["london"]}
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers
            ) as r:
                answer = await r.json()
                assert r.status == 200, answer
                assert r.headers["X-Meridian-Model"] == large and answer["model"] == large
            assert sum(sim.stats.requests for sim in sims.values()) - before == 2  # one try of each model
            for sim in sims.values():
                sim.faults = Faults(max_model_len=64, models=[large])
            body = {**body, "model": large}
            async with s.post(
                f.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers
            ) as r:
                refused = await r.json()
                assert r.status == 400 and "maximum context length is 64" in refused["error"]["message"], (
                    refused
                )
                assert r.headers["X-Meridian-Attempts"] == "1"
    finally:
        await f.close()


async def test_a_plain_openai_compatible_server_is_probed_on_its_model_list_and_never_scraped(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """``engine: openai``: a server with no /health and no /metrics is healthy while GET /v1/models lists
    every model it serves; it is never scraped; a listing without one of its models makes it down."""
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        catalog=True,
        regions=("eu-west-1",),
        region_overrides={"eu-west-1": {"engine": "openai"}},
        sim_kwargs={"ttft_ms": 1.0},
    )
    try:
        for server in f.sims["eu-west-1"].values():
            for route in server.app.router.routes():
                if route.resource is not None and route.resource.canonical in ("/health", "/metrics"):
                    route._handler = not_here
        prober = f.admin_app.state.prober
        start = prober.rounds

        async def rounds(n: int) -> bool:
            return bool(prober.rounds >= start + n)

        await wait_for(lambda: rounds(6), timeout=10, what="six probe rounds")
        _, region = await f.admin("GET", "/v1/regions/eu-west-1")
        assert set(region["replicas"].values()) == {"up"}, region  # /health would have taken both down
        assert not [k for k in prober.latest if k[0] == "eu-west-1"]  # nothing scraped
        status, _ = await chat(f)
        assert status == 200
        only = next(iter(f.sims["eu-west-1"]))
        f.sim("eu-west-1", only).models = {"other-model": None}  # its listing now lacks what it serves
        start = prober.rounds
        await wait_for(lambda: rounds(6), timeout=10, what="six more probe rounds")
        _, region = await f.admin("GET", "/v1/regions/eu-west-1")
        assert region["replicas"][only] == "down", region
    finally:
        await f.close()


async def not_here(request: aiohttp.web.Request) -> aiohttp.web.Response:
    return aiohttp.web.Response(status=404)


async def test_a_malformed_event_is_dropped_and_counted_and_the_rest_of_the_stream_arrives(
    fleet: Fleet,
) -> None:
    for sim in replicas(fleet).values():
        sim.faults = Faults(malformed_event_at=2)
    status, _, data, _ = await stream(fleet, tokens=5)
    assert status == 200
    events = [e for e in data.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and all(json.loads(e[6:]) for e in events[:-1]), data
    words = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert len([w for w in words if w]) == 5  # every token, none lost with the broken event
    async with aiohttp.ClientSession() as s, s.get(fleet.edges["eu-west-1"].make_url("/metrics")) as r:
        text = await r.text()
    assert 'meridian_edge_malformed_events_total{region="eu-west-1"} 1.0' in text
    for sim in replicas(fleet).values():
        sim.faults = Faults()
    assert (await stream(fleet))[0] == 200


async def test_a_stream_cut_after_40_of_60_tokens_reaches_the_client_whole(fleet: Fleet) -> None:
    """The region breaks off after 40 tokens: the edge asks the other replica to go on from the 40 tokens
    (vLLM's continue_final_message) and stitches its events in — one stream: one id, 60 tokens, one usage
    chunk counting 60 completion tokens, [DONE]."""
    sims, other = await cut_where_it_goes(fleet, after=40)
    _, _, data, _ = await post(fleet, max_tokens=60, stream=True, stream_options={"include_usage": True})
    events = stream_events(data)
    assert data.rstrip().endswith(b"data: [DONE]"), data[-300:]
    words = [e["choices"][0]["delta"].get("content") for e in events if e.get("choices")]
    assert len([w for w in words if w]) == 60
    assert len({e["id"] for e in events}) == 1  # one stream, as the client sees it
    usage = [e["usage"] for e in events if e.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] == 60, usage
    prefix = sims[other].stats.continued
    assert len(prefix) == 1 and len(prefix[0].split()) == 40  # it went on from exactly what the client had


async def test_a_continuation_whose_replica_fails_before_its_first_byte_goes_on_at_the_next(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The stream is cut in eu-west-1 and the region's other engine resets every connection (the prober off,
    so the edge still plans it): the continuation passes it for the next region, and the client still gets
    one whole stream. Before, the first continuation that failed to connect ended the stream in an error."""
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        catalog=True,
        regions=("eu-west-1", "us-east-1"),
        probe=False,
        sim_kwargs={"ttft_ms": 1.0},
        edge_overrides={"timeouts": TIMEOUTS},
    )
    try:
        sims, down = await cut_where_it_goes(f, after=3, other=Faults(down=True))
        status, _, data, _ = await post(f, max_tokens=8, stream=True, stream_options={"include_usage": True})
        events = stream_events(data)
        assert status == 200 and data.rstrip().endswith(b"data: [DONE]"), data[-300:]
        assert not any("error" in e for e in events) and len({e["id"] for e in events}) == 1
        assert [e["usage"]["completion_tokens"] for e in events if e.get("usage")] == [8]
        went_on = [f.sim("us-east-1", r).stats.continued for r in f.sims["us-east-1"]]
        assert sorted(len(c) for c in went_on) == [0, 1] and sims[down].stats.requests >= 1
    finally:
        await f.close()


async def test_where_no_replica_can_go_on_the_client_gets_an_error_event_and_a_clean_end(
    fleet: Fleet,
) -> None:
    """The other replica refuses the prefix: the client hears of the original fault — an error event in
    OpenAI's stream shape and a clean end, not a reset, not the continuation's refusal."""
    await cut_where_it_goes(fleet, after=3, other=Faults(reject_prefix=True))
    status, _, data, _ = await stream(fleet, tokens=10)  # a clean end: no ClientPayloadError
    events = stream_events(data)
    assert status == 200 and "error" in events[-1] and events[-1]["error"]["code"] == "stream_cut", events[-1]
    assert "broke off" in events[-1]["error"]["message"] and b"[DONE]" not in data


async def test_a_content_policy_refusal_reaches_the_client_with_the_providers_reason(fleet: Fleet) -> None:
    """A 400 content_filter is the client's answer: returned as the provider gave it, never retried on
    another replica or model, and no failure of the replica (its next healthy answer is its own)."""
    _, headers = await chat(fleet)
    strict = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[strict].faults = Faults(content_filter=True)
    before = {name: sim.stats.requests for name, sim in sims.items()}
    status, headers, data, _ = await post(fleet)
    answer = json.loads(data)
    assert status == 400 and headers["X-Meridian-Attempts"] == "1"
    assert answer["error"]["code"] == "content_filter" and "content policy" in answer["error"]["message"]
    assert {n: sim.stats.requests - before[n] for n, sim in sims.items()} == {
        n: int(n == strict) for n in sims
    }  # the refusing replica once, nobody else
    sims[strict].faults = Faults()
    status, headers = await chat(fleet)
    assert status == 200 and headers["X-Meridian-Replica"] == strict  # not held against it


def served_tokens(data: bytes) -> list[str]:
    events = stream_events(data)
    return [w for e in events for c in e.get("choices", []) if (w := c.get("delta", {}).get("content"))]


async def test_a_500_once_is_retried_on_the_other_replica_of_the_region(fleet: Fleet) -> None:
    """One 500 (the request broke one run): the other replica answers at once; the failing one was asked
    once and serves the next request itself."""
    _, headers = await chat(fleet)
    flaky = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[flaky].faults = Faults(fail_first=1, error_status=500)
    before = {name: sim.stats.requests for name, sim in sims.items()}
    status, headers = await chat(fleet)
    assert status == 200 and headers["X-Meridian-Replica"] != flaky and headers["X-Meridian-Attempts"] == "2"
    assert {n: sim.stats.requests - before[n] for n, sim in sims.items()} == {n: 1 for n in sims}
    assert sims[flaky].stats.errors == 1


async def test_a_reset_before_any_header_is_retried_on_the_other_replica(fleet: Fleet) -> None:
    _, headers = await chat(fleet)
    resetting = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[resetting].faults = Faults(reset=True)
    before = sims[resetting].stats.requests
    status, headers = await chat(fleet)
    assert status == 200 and headers["X-Meridian-Replica"] != resetting
    assert sims[resetting].stats.requests - before == 1
    sims[resetting].faults = Faults()
    assert (await chat(fleet))[0] == 200


async def test_a_429_without_retry_after_on_every_replica_falls_back_without_a_tight_loop(
    fleet: Fleet,
) -> None:
    """Every replica of the model refuses (429, no Retry-After): each is asked once, the request falls back
    to the catalog's next model; the next request does not ask the refusing replicas again at once."""
    big, small = "llama-3.1-70b-instruct", MODEL  # regions.yaml: the 70b falls back to the 8b
    sims = replicas(fleet)
    for sim in sims.values():
        sim.faults = Faults(error_rate=1.0, error_status=429, models=[big])
    status, headers, data, _ = await post(fleet, model=big)
    assert status == 200 and headers["X-Meridian-Model"] == small and json.loads(data)["model"] == small
    assert sorted(sim.stats.errors for sim in sims.values()) == [1, 1]  # each replica once: bounded
    status, headers, _, _ = await post(fleet, model=big)
    assert status == 200 and headers["X-Meridian-Model"] == small
    assert sum(sim.stats.errors for sim in sims.values()) <= 3  # held: not asked again and again


async def test_a_stream_that_stalls_is_cut_at_the_idle_limit_and_goes_on_elsewhere(fleet: Fleet) -> None:
    """After 3 tokens the replica falls silent: past the idle limit the edge treats it as a cut and the
    other replica finishes the answer: the client gets every token and [DONE], in about the idle limit."""
    _, headers, _, _ = await stream(fleet)
    stalling = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[stalling].faults = Faults(stall_after_tokens=3, stall_s=600)
    status, _, data, took = await stream(fleet, tokens=8)
    assert status == 200 and data.rstrip().endswith(b"data: [DONE]"), data[-300:]
    assert len(served_tokens(data)) == 8 and IDLE_S <= took < IDLE_S + 2.0, took
    (other,) = set(sims) - {stalling}
    assert [len(p.split()) for p in sims[other].stats.continued] == [3]


async def test_a_whole_stream_without_done_gets_its_done_from_the_edge(fleet: Fleet) -> None:
    """A server that leaves out `data: [DONE]` after a finished answer: the client's stream still ends as
    OpenAI's does, and the answer is not treated as a cut (nobody is asked to go on)."""
    sims = replicas(fleet)
    for sim in sims.values():
        sim.faults = Faults(no_done=True)
    status, headers, data, _ = await stream(fleet, tokens=5)
    assert status == 200 and data.endswith(b"data: [DONE]\n\n") and len(served_tokens(data)) == 5
    assert headers["X-Meridian-Attempts"] == "1"
    assert all(not sim.stats.continued for sim in sims.values())


async def test_a_replica_down_for_a_while_is_routed_around_and_back_in_service_after(fleet: Fleet) -> None:
    """Down for 2 s (every connection reset): the other replica serves meanwhile; within 30 s of its
    recovery the replica is serving again (half-open probes, not a permanent ejection)."""
    _, headers = await chat(fleet)
    down = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[down].faults = Faults(down_for_s=2.0)
    back_at = time.monotonic() + 2.0
    for _ in range(5):
        status, headers = await chat(fleet)
        assert status == 200 and headers["X-Meridian-Replica"] != down

    async def serving_again() -> bool:
        return (await chat(fleet))[1]["X-Meridian-Replica"] == down

    await wait_for(serving_again, timeout=32, what="the replica serving again after its recovery")
    assert time.monotonic() - back_at < 30


async def test_a_stream_that_ends_early_without_a_finish_is_a_cut_not_a_success(fleet: Fleet) -> None:
    """A stream that ends cleanly after 4 of 10 tokens (no finish reason, no [DONE]) is not passed off as
    whole: it is treated as a cut and the other replica finishes the answer."""
    _, headers, _, _ = await stream(fleet)
    short = headers["X-Meridian-Replica"]
    sims = replicas(fleet)
    sims[short].faults = Faults(end_after_tokens=4)
    status, _, data, _ = await stream(fleet, tokens=10)
    assert status == 200 and data.endswith(b"data: [DONE]\n\n") and len(served_tokens(data)) == 10
    (other,) = set(sims) - {short}
    assert [len(p.split()) for p in sims[other].stats.continued] == [4]


async def test_a_model_the_catalog_says_cannot_be_continued_ends_with_the_error_event(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """`continuation: none` in the catalog wins over the engine (vllm would take the prefix): a stream cut
    after 3 tokens ends with the stream_cut error event, and no replica is asked to go on."""
    f = await conduct_fleet(tmp_path, serve, geo_db, model_overrides={MODEL: {"continuation": "none"}})
    try:
        _, headers, _, _ = await stream(f)
        sims = replicas(f)
        sims[headers["X-Meridian-Replica"]].faults = Faults(cut_after_tokens=3)
        status, _, data, _ = await stream(f, tokens=10)
        events = stream_events(data)
        assert status == 200 and events[-1]["error"]["code"] == "stream_cut", events[-1]
        assert all(not sim.stats.continued for sim in sims.values())
    finally:
        await f.close()
