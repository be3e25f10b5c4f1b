"""Hedged requests for critical traffic across regions, on real simulators and edges over loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.trace import SpanKind

from edge.telemetry import tracing
from edge.telemetry.tracing import ATTR_CANCELLED, ATTR_WINNER
from regionsim.model import Faults
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
CRITICAL = {"X-Meridian-Priority": "critical", "X-Forwarded-For": CLIENT_IP["london"]}


async def two_regions(tmp_path: Path, serve: ServerFactory, geo_db: Path, **edge: Any) -> Fleet:
    return await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=("eu-west-1", "us-east-1"),
        edge_overrides={"hedge_fixed_delay_s": 0.05, **edge},
    )


@pytest.fixture
async def hfleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await two_regions(tmp_path, serve, geo_db)
    try:
        yield f
    finally:
        await f.close()


def slow(fleet: Fleet, region: str, ms: float) -> None:
    for rep in fleet.sims[region]:
        fleet.sim(region, rep).faults = Faults(extra_latency_ms=ms)


def stat(fleet: Fleet, region: str, field: str) -> int:
    return sum(getattr(fleet.sim(region, rep).stats, field) for rep in fleet.sims[region])


async def post(fleet: Fleet, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, r.headers, await r.read()


async def test_slow_primary_the_hedge_wins_and_the_loser_is_cancelled(hfleet: Fleet) -> None:
    slow(hfleet, "eu-west-1", 800)
    status, headers, body = await post(hfleet, CHAT, CRITICAL)
    assert status == 200
    assert headers["X-Meridian-Region"] == "us-east-1" and headers["X-Sim-Region"] == "us-east-1"
    assert headers["X-Meridian-Hedged"] == "1" and headers["X-Meridian-Attempts"] == "2"
    assert json.loads(body)["object"] == "chat.completion"

    async def cancelled() -> bool:
        return stat(hfleet, "eu-west-1", "cancelled") == 1

    await wait_for(cancelled, timeout=2, what="the primary region to see its request cancelled")
    assert stat(hfleet, "eu-west-1", "completed") == 0
    async with aiohttp.ClientSession() as s, s.get(hfleet.edge_url("eu-west-1") + "metrics") as r:
        text = await r.text()
    # hedged attempts are accounted like any other: the winner once, the cancelled loser not at all
    assert 'meridian_edge_upstream_attempts_total{kind="hedge",outcome="200",region="us-east-1"} 1.0' in text
    assert 'kind="primary"' not in text


async def test_fast_primary_is_not_hedged(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> None:
    # a primary that answers in ~10 ms, well inside a 1 s hedge delay (no timing race on a loaded machine)
    f = await two_regions(tmp_path, serve, geo_db, hedge_fixed_delay_s=1.0)
    try:
        for _ in range(5):
            status, headers, _ = await post(f, CHAT, CRITICAL)
            assert status == 200 and headers["X-Meridian-Region"] == "eu-west-1"
            assert "X-Meridian-Hedged" not in headers and headers["X-Meridian-Attempts"] == "1"
        assert stat(f, "us-east-1", "requests") == 0
    finally:
        await f.close()


async def test_normal_priority_is_never_hedged(hfleet: Fleet) -> None:
    slow(hfleet, "eu-west-1", 300)
    status, headers, _ = await post(hfleet, CHAT, {"X-Forwarded-For": CLIENT_IP["london"]})
    assert (
        status == 200 and headers["X-Meridian-Region"] == "eu-west-1" and "X-Meridian-Hedged" not in headers
    )


async def test_no_hedge_when_the_budget_is_empty(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> None:
    f = await two_regions(tmp_path, serve, geo_db, hedge_budget_burst=1.0, hedge_budget_ratio=0.0)
    try:
        slow(f, "eu-west-1", 300)
        _, first, _ = await post(f, CHAT, CRITICAL)
        _, second, _ = await post(f, CHAT, CRITICAL)
        assert first["X-Meridian-Hedged"] == "1"
        assert "X-Meridian-Hedged" not in second and second["X-Meridian-Region"] == "eu-west-1"
        async with aiohttp.ClientSession() as s, s.get(f.edge_url("eu-west-1") + "metrics") as r:
            text = await r.text()
        assert 'meridian_edge_hedges_total{outcome="sent",region="us-east-1"} 1.0' in text
        # one hedge over two requests, and it won (its primary cancelled): charged half, 0.5 / 2
        assert "meridian_edge_hedge_extra_load_ratio 0.25" in text
    finally:
        await f.close()


async def test_streaming_hedge_delivers_exactly_one_stream(hfleet: Fleet) -> None:
    slow(hfleet, "eu-west-1", 800)
    status, headers, body = await post(hfleet, {**CHAT, "stream": True, "max_tokens": 8}, CRITICAL)
    assert status == 200 and headers["X-Meridian-Hedged"] == "1"
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len(chunks) == 9  # 8 tokens + the stop chunk, from one upstream only
    assert len({c["id"] for c in chunks}) == 1


async def test_spans_one_trace_two_attempts_winner_marked(hfleet: Fleet) -> None:
    slow(hfleet, "eu-west-1", 800)
    hfleet.exporter.clear()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    status, headers, _ = await post(
        hfleet, CHAT, {**CRITICAL, "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    )
    assert status == 200 and headers["X-Sim-Trace-Id"] == trace_id

    async def ended() -> bool:
        spans = [s for s in hfleet.exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
        return sum(1 for s in spans if s.kind == SpanKind.CLIENT) == 2 and any(
            s.kind == SpanKind.SERVER for s in spans
        )

    await wait_for(ended, timeout=2, what="both attempt spans")
    spans = [s for s in hfleet.exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    server = next(s for s in spans if s.kind == SpanKind.SERVER)
    attempts = {s.attributes[tracing.ATTR_ATTEMPT_KIND]: s for s in spans if s.kind == SpanKind.CLIENT}  # type: ignore[index]
    assert set(attempts) == {"primary", "hedge"}
    for s in attempts.values():
        assert s.parent is not None and s.parent.span_id == server.context.span_id
    hedge, primary = attempts["hedge"].attributes, attempts["primary"].attributes
    assert hedge is not None and primary is not None
    assert hedge[ATTR_WINNER] is True and hedge[tracing.ATTR_REGION] == "us-east-1"
    assert primary[ATTR_WINNER] is False and primary[ATTR_CANCELLED] is True
    # the simulator that won saw the same trace
    assert hfleet.sim("us-east-1", headers["X-Sim-Replica"]).stats.trace_ids[-1] == trace_id
