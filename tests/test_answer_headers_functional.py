"""Every answer says what the edge cost and which request it was (issue: "every answer says what the edge
cost"): `x-request-id` is the trace id of the edge's span for the request (the same id in the access log),
and `Server-Timing` gives the edge's own time before the upstream was called and the upstream's time to its
first byte — on streams, buffered answers, refusals and the edge's own endpoints alike."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.fleet import Fleet, ServerFactory, start_fleet
from tests.geodb import CLIENT_IP

EDGE = "eu-west-1"
CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
TIMING = re.compile(r"^edge;dur=(\d+\.\d\d)(?:, upstream;dur=(\d+\.\d\d))?$")


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=(EDGE,),
        sim_kwargs={"ttft_ms": 60.0},
        edge_overrides={"access_log": True},
    )
    try:
        yield f
    finally:
        await f.close()


def timing(header: str) -> tuple[float, float | None]:
    m = TIMING.match(header)
    assert m, header
    return float(m[1]), None if m[2] is None else float(m[2])


async def test_streams_and_buffered_answers_carry_their_trace_id_and_the_edges_and_upstreams_time(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meridian.access")
    hdrs = {"X-Forwarded-For": CLIENT_IP["london"]}
    async with aiohttp.ClientSession() as s:
        for stream in (True, False):
            body = {**CHAT, "stream": stream}
            async with s.post(fleet.edge_url(EDGE) + "v1/chat/completions", json=body, headers=hdrs) as r:
                await r.read()
                assert r.status == 200
                rid, (edge_ms, upstream_ms) = r.headers["x-request-id"], timing(r.headers["Server-Timing"])
            assert re.fullmatch(r"[0-9a-f]{32}", rid)
            spans = [sp for sp in fleet.exporter.get_finished_spans() if f"{sp.context.trace_id:032x}" == rid]
            assert any(sp.name == "meridian.edge.request" for sp in spans), rid  # the client finds its trace
            assert upstream_ms is not None and upstream_ms >= 60.0  # the simulator's time to first token
            assert 0.0 < edge_ms < upstream_ms  # the edge decided before the upstream answered
            assert any(f"x-request-id={rid}" in rec.getMessage() for rec in caplog.records)  # the access log


async def test_refusals_and_the_edges_own_answers_carry_an_id_and_the_edges_time_only(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s:
        for method, path in (("POST", "v1/no-such-route"), ("GET", "healthz")):
            async with s.request(method, fleet.edge_url(EDGE) + path) as r:
                await r.read()
                assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), (path, r.headers)
                edge_ms, upstream_ms = timing(r.headers["Server-Timing"])
                assert upstream_ms is None and edge_ms >= 0.0, path
        ids = set()
        for _ in range(3):
            async with s.get(fleet.edge_url(EDGE) + "healthz") as r:
                ids.add(r.headers["x-request-id"])
        assert len(ids) == 3  # one per answer, never reused


async def test_a_streams_access_log_line_counts_every_event_the_client_got(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream's events after the first go to the client from the region connection's callback, around
    aiohttp's writer: the access log's byte count (aiohttp's, from its writer) still counts all of them."""
    caplog.set_level(logging.INFO, logger="meridian.access")
    hdrs = {"X-Forwarded-For": CLIENT_IP["london"]}
    body = {**CHAT, "stream": True, "max_tokens": 60}
    url = fleet.edge_url(EDGE) + "v1/chat/completions"
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=hdrs) as r:
        events = await r.read()
        rid = r.headers["x-request-id"]
    assert events.count(b"\n\ndata: ") >= 60 and events.endswith(b"data: [DONE]\n\n")
    line = next(rec.getMessage() for rec in caplog.records if f"x-request-id={rid}" in rec.getMessage())
    logged = int(line.split('" ')[1].split()[1])  # %s %b after the request line
    framing = events.count(b"\n\n") * len(b"ff\r\n\r\n") + len(b"0\r\n\r\n")  # each event its own chunk
    headers = 1024  # aiohttp counts the status line and headers too (they left with the first event)
    assert len(events) <= logged <= len(events) + framing + headers, (len(events), logged, line)
