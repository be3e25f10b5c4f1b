"""The real path client -> edge -> region over loopback: geolocation, dials, SSE, tracing, bad input."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from opentelemetry.trace import SpanKind

from edge.telemetry import tracing
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.observed import Observed
from edge.telemetry.reporter import Reporter
from fleet.redisconn import connect
from meridian.redisproc import free_port
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}]}


async def ask(
    session: aiohttp.ClientSession,
    edge: str,
    ip: str | None,
    *,
    body: object = CHAT,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    hdrs = {"X-Forwarded-For": ip} if ip else {}
    hdrs.update(headers or {})
    async with session.post(edge + "v1/chat/completions", json=body, headers=hdrs) as r:
        return r.status, r.headers, await r.read()


async def one_edge(tmp_path: Path, serve: ServerFactory, geo_db: Path, edge: dict[str, object]) -> Fleet:
    """eu-west-1 alone: its simulators, its Redis replica and one edge with ``edge`` settings."""
    return await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=("eu-west-1",),
        edges=("eu-west-1",),
        control_plane=False,
        edge_overrides=edge,
    )


# each client at the edge geo-DNS should send it to: the nearest one
NEAREST_EDGE = {
    "london": "eu-west-1",
    "london_v6": "eu-west-1",
    "new_york": "us-east-1",
    "california": "us-west-2",
    "singapore": "ap-southeast-1",
    "singapore_v6": "ap-southeast-1",
    "sao_paulo": "us-east-1",
    "sydney": "ap-southeast-1",
    "johannesburg": "ap-southeast-1",
}


async def test_clients_on_five_continents_are_served_by_their_nearest_edges_region(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s:
        await warm_up(s, fleet)
        for place, edge in NEAREST_EDGE.items():
            served: Counter[str] = Counter()
            for _ in range(50):
                status, headers, body = await ask(s, fleet.edge_url(edge), CLIENT_IP[place])
                assert status == 200, body
                assert headers["X-Meridian-Edge"] == edge and headers["X-Meridian-Attempts"] == "1"
                assert headers["X-Sim-Region"] == headers["X-Meridian-Region"]
                served[headers["X-Meridian-Region"]] += 1
            assert served == {edge: 50}, f"{place} at the {edge} edge: {served}"


async def warm_up(s: aiohttp.ClientSession, fleet: Fleet) -> None:
    """Until every edge has measured its round trip to every region and the store has service times."""

    async def measured() -> bool:
        for edge in fleet.edges:
            async with s.get(fleet.edge_url(edge) + "_meridian/route") as r:
                scores = (await r.json())["scores"]
            if any(x["network_source"] != "measured" for x in scores):
                return False
        for edge in fleet.edges:  # traffic everywhere, so each region's engine reports a TTFT
            await ask(s, fleet.edge_url(edge), None)
        _, regions = await fleet.admin("GET", "/v1/regions")
        return all(r["latency_ms"] is not None for r in regions["regions"])

    await wait_for(measured, timeout=15, interval=0.2, what="round trips and service times")


async def test_a_london_client_at_a_far_edge_is_served_there_unless_pinned(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The client-to-edge leg is the same whichever region serves: London at the Virginia edge is served in
    Virginia (not 82 ms further across the Atlantic and back) — unless a residency pin keeps it in the EU."""
    for pins, region in (({}, "us-east-1"), ({"EU": ["eu-west-1"]}, "eu-west-1")):
        f = await start_fleet(tmp_path / region, serve, geo_db=geo_db, policy={"pins": pins})
        try:
            async with aiohttp.ClientSession() as s:
                await warm_up(s, f)
                served: Counter[str] = Counter()
                for _ in range(50):
                    _, headers, _ = await ask(s, f.edge_url("us-east-1"), CLIENT_IP["london"])
                    served[headers["X-Meridian-Region"]] += 1
                assert served[region] >= 48, served  # at least 95 %
                async with s.get(f.edge_url("us-east-1") + "metrics") as r:
                    assert 'meridian_edge_misrouted_requests_total{nearer_edge="eu-west-1"}' in await r.text()
        finally:
            await f.close()


async def test_route_explains_client_edge_network_and_service_terms(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s:
        await warm_up(s, fleet)
        async with s.get(
            fleet.edge_url("us-east-1") + "_meridian/route", params={"ip": CLIENT_IP["london"]}
        ) as r:
            body = await r.json()
    assert body["choice"] == "us-east-1" and body["client_edge_ms"] > 50  # London to Virginia and back
    assert body["misrouted"]["nearer_edge"] == "eu-west-1"
    by = {x["region"]: x for x in body["scores"]}
    eu, us = by["eu-west-1"], by["us-east-1"]
    assert eu["network_source"] == "measured" and eu["network_ms"] > us["network_ms"] + 5  # the ocean, scaled
    for x in (eu, us):
        assert x["service_ms"] > 0
        expected = body["client_edge_ms"] + x["network_ms"] + x["service_ms"] + x["penalty_ms"]
        assert x["end_to_end_ms"] == pytest.approx(expected, abs=0.05)
    # the replica choice in the chosen region, step by step: filters, each replica's ratings, the picker
    steps = next(c for c in body["candidates"] if c["region"] == "us-east-1")["steps"]
    assert [s.get("filter") for s in steps[:2]] == ["room", "adapter"]
    assert set(steps[2]["scores"]) == set(steps[1]["kept"]) and steps[3] == {"picker": "two choices"}
    assert all(set(r) == {"load", "engine", "score"} for r in steps[2]["scores"].values())


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.0.7", "8.8.8.8", "fd00::1", None])
async def test_private_or_unknown_clients_are_served_by_the_edges_own_region(
    fleet: Fleet, ip: str | None
) -> None:
    async with aiohttp.ClientSession() as s:
        for edge in ("eu-west-1", "ap-southeast-1"):
            status, headers, _ = await ask(s, fleet.edge_url(edge), ip)
            assert status == 200
            assert headers["X-Meridian-Region"] == edge


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        regions=("eu-west-1", "us-east-1"),
        edge_overrides={"trusted_proxies": []},
    )
    try:
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await ask(s, f.edge_url("us-east-1"), CLIENT_IP["london"])
            assert status == 200
            # the loopback peer is not trusted: London's X-Forwarded-For is ignored, the peer is private
            assert headers["X-Meridian-Region"] == "us-east-1"
            async with s.get(f.edge_url("us-east-1") + "_meridian/route") as r:
                assert (await r.json())["location"]["source"] == "edge-default"
    finally:
        await f.close()


async def test_dial_to_zero_propagates_to_every_edge_within_a_second(fleet: Fleet) -> None:
    """Every edge stops routing to eu-west-1 within a second of the dial going to 0 (each edge's explainer
    says why), London at its own edge moves to the next best region, and all of it comes back."""
    london = CLIENT_IP["london"]
    async with aiohttp.ClientSession() as s:

        async def eu_dial_everywhere(off: bool) -> bool:
            for edge in fleet.edges:
                async with s.get(fleet.edge_url(edge) + "_meridian/route", params={"ip": london}) as r:
                    eu = next(x for x in (await r.json())["scores"] if x["region"] == "eu-west-1")
                if (eu["why_not"] == "weight 0") != off:
                    return False
            _, headers, _ = await ask(s, fleet.edge_url("eu-west-1"), london)
            return (headers["X-Meridian-Region"] == "eu-west-1") != off

        started = time.monotonic()
        status, body = await fleet.admin(
            "PATCH", "/v1/regions/eu-west-1", body={"weight": 0, "reason": "test: drain dial"}
        )
        assert status == 200, body
        took = await wait_for(
            lambda: eu_dial_everywhere(True), timeout=1.0, interval=0.005, what="every edge to take dial 0"
        )
        print(
            f"\ndial 0 propagated to {len(fleet.edges)} edges in "
            f"{(time.monotonic() - started) * 1000:.0f} ms (poll {took * 1000:.0f} ms)"
        )
        _, headers, _ = await ask(s, fleet.edge_url("eu-west-1"), london)
        assert headers["X-Meridian-Region"] == "us-east-1"  # the next best region from the London edge
        status, _ = await fleet.admin(
            "PATCH", "/v1/regions/eu-west-1", body={"weight": 100, "reason": "restore"}
        )
        assert status == 200
        took = await wait_for(
            lambda: eu_dial_everywhere(False), timeout=1.0, interval=0.005, what="every edge to take dial 100"
        )
        print(f"dial 100 restored on every edge in {took * 1000:.0f} ms")


async def test_dial_of_fifty_sends_half_to_the_next_best_region(fleet: Fleet) -> None:
    status, _ = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 50, "reason": "half"})
    assert status == 200

    async def applied() -> bool:
        async with (
            aiohttp.ClientSession() as s,
            s.get(fleet.edge_url("eu-west-1") + "_meridian/route", params={"ip": CLIENT_IP["london"]}) as r,
        ):
            row = next(x for x in (await r.json())["scores"] if x["region"] == "eu-west-1")
            return bool(row["weight"] == 50)

    await wait_for(applied, timeout=2, what="dial 50 on the edge")
    served: Counter[str] = Counter()
    sem = asyncio.Semaphore(4)  # light load: utilization stays low, so only the dial moves traffic
    async with aiohttp.ClientSession() as s:

        async def one() -> None:
            async with sem:
                status, headers, _ = await ask(
                    s, fleet.edge_url("eu-west-1"), CLIENT_IP["london"], body={**CHAT, "max_tokens": 1}
                )
                assert status == 200
                served[headers["X-Meridian-Region"]] += 1

        await asyncio.gather(*(one() for _ in range(2000)))
        async with s.get(
            fleet.edge_url("eu-west-1") + "_meridian/route", params={"ip": CLIENT_IP["london"]}
        ) as r:
            eu = next(x for x in (await r.json())["scores"] if x["region"] == "eu-west-1")
    print(f"\ndial 50 over 2000 London requests: {dict(served)}")
    # the other half goes to the next best region. A probe stalled by a busy machine may bring the two
    # runners-up within the tie margin for a moment, and the softmin then gives the third up to 12 % of
    # that moment's traffic: 2.5 % of the half was seen under CI's first hour (the suite beside two demos)
    assert {"eu-west-1", "us-east-1"} <= set(served) and served["us-east-1"] >= 0.95 * (
        2000 - served["eu-west-1"]
    )
    # only the dial should have moved traffic: a brown-out or a failback ramp would too (say which)
    assert abs(served["eu-west-1"] / 2000 - 0.5) <= 0.05, eu


async def test_sse_first_chunk_arrives_before_the_upstream_finishes(fleet: Fleet) -> None:
    sim = fleet.sim("eu-west-1", "euw1-a")
    for rep in fleet.sims["eu-west-1"]:
        fleet.sim("eu-west-1", rep).model = type(sim.model)(ttft_ms=5, per_token_ms=100)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            fleet.edge_url("eu-west-1") + "v1/chat/completions",
            json={**CHAT, "stream": True, "max_tokens": 10},
            headers={"X-Forwarded-For": CLIENT_IP["london"]},
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = await r.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        open_streams = sum(fleet.sim("eu-west-1", rep).stats.streams_open for rep in fleet.sims["eu-west-1"])
        assert open_streams == 1, "the first chunk must arrive while the upstream is still generating"
        rest = await r.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert rest.count(b"data: ") == 11  # 9 more tokens + the stop chunk + [DONE]


async def test_one_trace_spans_client_edge_attempt_and_simulator(fleet: Fleet) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_span = "00f067aa0ba902b7"
    fleet.exporter.clear()
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(
            s,
            fleet.edge_url("ap-southeast-1"),
            CLIENT_IP["singapore"],
            headers={"traceparent": f"00-{trace_id}-{parent_span}-01"},
        )
    assert status == 200
    assert headers["X-Sim-Trace-Id"] == trace_id
    spans = [sp for sp in fleet.exporter.get_finished_spans() if f"{sp.context.trace_id:032x}" == trace_id]
    server = [sp for sp in spans if sp.kind == SpanKind.SERVER]
    attempts = [sp for sp in spans if sp.kind == SpanKind.CLIENT]
    assert len(server) == 1 and len(attempts) == 1
    assert server[0].name == tracing.SPAN_SERVER
    assert server[0].parent is not None and f"{server[0].parent.span_id:016x}" == parent_span
    assert attempts[0].parent is not None and attempts[0].parent.span_id == server[0].context.span_id
    assert attempts[0].attributes is not None
    assert attempts[0].attributes[tracing.ATTR_REGION] == "ap-southeast-1"
    assert attempts[0].attributes[tracing.ATTR_ATTEMPT_KIND] == "primary"


async def test_an_unsampled_request_records_no_spans_but_its_trace_id_reaches_the_region(
    fleet: Fleet,
) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    fleet.exporter.clear()
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(
            s,
            fleet.edge_url("us-east-1"),
            CLIENT_IP["singapore"],
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"},  # sampled flag off upstream of us
        )
    assert status == 200
    assert headers["X-Sim-Trace-Id"] == trace_id
    assert not [sp for sp in fleet.exporter.get_finished_spans() if f"{sp.context.trace_id:032x}" == trace_id]


async def test_an_edge_sampling_nothing_records_no_spans_yet_follows_a_sampled_client(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    f = await one_edge(tmp_path, serve, geo_db, {"tracing_sample_ratio": 0.0})
    try:
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await ask(s, f.edge_url("eu-west-1"), CLIENT_IP["london"])
            assert status == 200
            assert len(headers["X-Sim-Trace-Id"]) == 32  # the region still gets a trace context
            assert f.exporter.get_finished_spans() == ()
            trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
            status, headers, _ = await ask(
                s,
                f.edge_url("eu-west-1"),
                CLIENT_IP["london"],
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
        assert status == 200
        kinds = sorted(sp.kind.name for sp in f.exporter.get_finished_spans())
        assert kinds == ["CLIENT", "SERVER"]
    finally:
        await f.close()


async def test_a_streams_status_line_goes_with_its_first_event(fleet: Fleet) -> None:
    """A streaming server sends its headers at once; the edge commits to it (status line to the client) only
    with its first event, so until then the request may still go elsewhere (first-token limit)."""
    release = asyncio.Event()

    async def slow_stream(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)  # headers now, first token later
        await release.wait()
        await resp.write(b'data: {"first": true}\n\n')
        await resp.write_eof()
        return resp

    for rep in fleet.sims["eu-west-1"]:
        for route in fleet.sims["eu-west-1"][rep].app.router.routes():
            if route.resource is not None and route.resource.canonical == "/v1/chat/completions":
                route._handler = slow_stream
    async with aiohttp.ClientSession() as s:
        pending = asyncio.ensure_future(
            s.post(
                fleet.edge_url("eu-west-1") + "v1/chat/completions",
                json={**CHAT, "stream": True},
                headers={"X-Forwarded-For": CLIENT_IP["london"]},
            )
        )
        done, _ = await asyncio.wait({pending}, timeout=0.3)  # well past the region's headers
        assert not done  # nothing committed before the first event
        release.set()
        r = await asyncio.wait_for(pending, 5)
        try:
            assert r.status == 200 and r.headers["X-Meridian-Region"] == "eu-west-1"
            assert await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5) == b'data: {"first": true}\n\n'
        finally:
            r.release()


def _sse_chunks(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)


async def test_a_streams_events_that_arrive_together_leave_together_and_its_end_with_its_last_events(
    fleet: Fleet,
) -> None:
    """One write to the client per read from the region (what nginx does): events that reach the edge in one
    read leave in one HTTP chunk, and the events that come with the stream's end leave with its end, not one
    chunk (and one system call) each. Read off the client's own bytes: chunk boundaries survive TCP."""
    seen = [asyncio.Event(), asyncio.Event()]  # the client has read its first chunk, its second
    events = [b'data: {"choices": [{"delta": {"content": "t%d"}}]}\n\n' % i for i in range(4)]
    finish = b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n'

    async def bursty(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        transport = request.transport
        assert transport is not None
        transport.write(_sse_chunks(events[0]))
        await seen[0].wait()
        transport.write(_sse_chunks(*events[1:]))  # three HTTP chunks in one write: one read at the edge
        await seen[1].wait()
        transport.write(_sse_chunks(finish, b"data: [DONE]\n\n") + b"0\r\n\r\n")
        transport.close()  # the body is whole: nothing more on this connection
        return resp

    for rep in fleet.sims["eu-west-1"]:
        for route in fleet.sims["eu-west-1"][rep].app.router.routes():
            if route.resource is not None and route.resource.canonical == "/v1/chat/completions":
                route._handler = bursty
    url = urlsplit(fleet.edge_url("eu-west-1"))
    body = json.dumps({**CHAT, "stream": True}).encode()
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            b"X-Forwarded-For: %b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
            % (CLIENT_IP["london"].encode(), len(body), body)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
        chunks: list[bytes] = []
        while True:
            size = int(await asyncio.wait_for(reader.readline(), 5), 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), 5)
            if size == 0:
                break
            chunks.append(data[:-2])
            seen[min(len(chunks), 2) - 1].set()
    finally:
        writer.close()
    assert chunks == [events[0], b"".join(events[1:]), finish + b"data: [DONE]\n\n"], chunks


async def test_client_sent_internal_headers_are_stripped(fleet: Fleet) -> None:
    seen: dict[str, str] = {}
    sim_app = fleet.sims["eu-west-1"]["euw1-a"].app

    async def capture(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.update(request.headers)
        return aiohttp.web.json_response({})

    # swap the handler the simulator's router resolves (the simulator is the upstream, not Meridian)
    for route in sim_app.router.routes():
        if route.resource is not None and route.resource.canonical == "/v1/models":
            route._handler = capture
    for rep in fleet.sims["eu-west-1"]:
        if rep != "euw1-a":
            fleet.sim("eu-west-1", rep).faults = type(fleet.sim("eu-west-1", rep).faults)(down=True)
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            fleet.edge_url("eu-west-1") + "v1/models",
            headers={
                "X-Forwarded-For": CLIENT_IP["london"],
                "X-Meridian-Region": "ap-southeast-1",
                "X-Meridian-Internal": "1",
                "X-Meridian-Priority": "batch",
            },
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["X-Meridian-Region"] == "eu-west-1"
    assert "X-Meridian-Internal" not in seen and "X-Meridian-Region" not in seen
    assert seen["X-Meridian-Priority"] == "batch"
    assert seen["X-Forwarded-For"] == CLIENT_IP["london"]
    assert seen["traceparent"].startswith("00-")


@pytest.mark.parametrize("xff", ["not-an-ip", "81.2.69.142, garbage", ",,,", "999.1.1.1", "[::1", "a" * 5000])
async def test_malformed_forwarded_for_is_served_not_500(fleet: Fleet, xff: str) -> None:
    async with aiohttp.ClientSession() as s:
        status, headers, _ = await ask(s, fleet.edge_url("us-west-2"), xff)
    assert status == 200
    assert headers["X-Meridian-Region"] in fleet.topology.names


async def test_request_body_over_the_limit_gets_413(fleet: Fleet) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            fleet.edge_url("us-east-1") + "v1/chat/completions",
            data=b"x" * (2 << 20),
            headers={"Content-Type": "application/json"},
        ) as r,
    ):
        assert r.status == 413
        body = await r.json()
    assert "MERIDIAN_MAX_BODY_BYTES" in body["error"]["message"]
    assert (
        sum(
            st.stats.requests for reg in fleet.sims for st in (fleet.sim(reg, rep) for rep in fleet.sims[reg])
        )
        == 0
    )


async def test_the_edge_server_does_what_a_router_did(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The edge answers on aiohttp's low-level server: the body limit comes from the settings, clients that
    ask for 100-continue get it, other Expect values and non-GET calls to Meridian's endpoints are refused."""
    f = await one_edge(tmp_path, serve, geo_db, {"max_body_bytes": 4096, "body_timeout_s": 0.5})
    url = f.edge_url("eu-west-1")
    try:
        async with aiohttp.ClientSession() as s:
            big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
            status, _, body = await ask(s, url, CLIENT_IP["london"], body=big)
            assert status == 413 and b"4096 bytes" in body
            async with s.post(
                url + "v1/chat/completions",
                json=CHAT,
                expect100=True,
                headers={"X-Forwarded-For": CLIENT_IP["london"]},
            ) as r:
                assert r.status == 200 and r.headers["X-Meridian-Region"] == "eu-west-1"
            status, _, body = await ask(s, url, CLIENT_IP["london"], headers={"Expect": "something-else"})
            assert status == 417 and b"Expect" in body
            async with s.post(url + "healthz") as r:
                assert r.status == 405 and r.headers["Allow"] == "GET"
            async with s.get(url + "_meridian/nothing-here") as r:
                assert r.status == 404 and (await r.json())["error"]["type"] == "meridian_not_found"
        # a client that announces a body over the limit and waits for 100 Continue is refused at once
        port = f.edges["eu-west-1"].port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        # a body that trickles in is cut off after MERIDIAN_BODY_TIMEOUT_S with 408
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        # HTTP/0.9 and a text HTTP/2.0 request line are refused; responses do not advertise aiohttp
        for raw in (b"GET /v1/models\r\n\r\n", b"GET /v1/models HTTP/2.0\r\nHost: edge\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(4096), timeout=5)
            writer.close()
            assert b" 505 " in answer.split(b"\r\n", 1)[0], answer[:80]
        async with aiohttp.ClientSession() as s, s.get(url + "healthz") as r:
            assert r.headers["Server"] == "meridian-edge"
        served = sum(f.sim("eu-west-1", rep).stats.requests for rep in f.sims["eu-west-1"])
        assert served == 1  # the 100-continue call only: refused requests never reach a region
    finally:
        await f.close()


async def test_bad_priority_and_route_query_get_400_naming_the_field(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s:
        status, _, body = await ask(
            s, fleet.edge_url("us-east-1"), None, headers={"X-Meridian-Priority": "urgent"}
        )
        assert status == 400 and b"X-Meridian-Priority" in body
        async with s.get(fleet.edge_url("us-east-1") + "_meridian/route", params={"ip": "1.2.3"}) as r:
            assert r.status == 400
            assert "'ip'" in (await r.json())["error"]["message"]


async def test_route_explains_the_decision(fleet: Fleet) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(fleet.edge_url("eu-west-1") + "_meridian/route", params={"ip": CLIENT_IP["london_v6"]}) as r,
    ):
        body = await r.json()
    assert body["location"]["country"] == "GB" and body["location"]["source"] == "geoip"
    assert body["choice"] == "eu-west-1" and body["backup"] == "us-east-1"
    assert body["misrouted"] is None  # London reached its nearest edge
    assert {x["region"] for x in body["scores"]} == set(fleet.topology.names)
    assert all(
        {"network_ms", "network_source", "service_ms", "utilization", "weight", "score_ms", "end_to_end_ms"}
        <= set(x)
        for x in body["scores"]
    )


async def test_metrics_and_health_endpoints(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s:
        await ask(s, fleet.edge_url("us-east-1"), CLIENT_IP["new_york"])
        async with s.get(fleet.edge_url("us-east-1") + "metrics") as r:
            text = await r.text()
        async with s.get(fleet.edge_url("us-east-1") + "healthz") as r:
            assert r.status == 200
        async with s.get(fleet.edge_url("us-east-1") + "readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
    assert 'meridian_edge_requests_total{code="200",region="us-east-1"} 1.0' in text
    assert "meridian_edge_snapshot_age_seconds" in text


async def test_observation_rows_that_cannot_be_sent_are_counted() -> None:
    """The primary is unreachable: the batch is dropped (routing never waits on it) and counted."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    metrics = EdgeMetrics(snapshot_age=lambda: 0.0, snapshot_version=lambda: 1.0, store_connected=lambda: 1.0)
    observed = Observed()
    observed.record("eu-west-1", error=False)
    observed.record("us-east-1", error=True)
    reporter = Reporter(
        client=client,
        edge="us-east-1",
        observed=observed,
        interval_s=1.0,
        dropped=metrics.observations_dropped,
    )
    try:
        await reporter.flush()
    finally:
        await client.aclose()
    assert metrics.registry.get_sample_value("meridian_edge_observations_dropped_total") == 2.0


async def test_only_inference_routes_reach_a_region(fleet: Fleet) -> None:
    """Engines' admin and debug routes (the simulator's fault injection, vLLM's /sleep, LoRA loading …) are
    404 at the edge and never reach a region; a wrong method on an inference route is 405."""
    edge = fleet.edge_url("eu-west-1")
    before = {(r, n): fleet.sim(r, n).stats.requests for r in fleet.sims for n in fleet.sims[r]}
    async with aiohttp.ClientSession() as s:
        for method, path in [
            ("POST", "_sim/faults"),
            ("DELETE", "_sim/faults"),
            ("GET", "_sim/stats"),
            ("POST", "v1/load_lora_adapter"),
            ("POST", "sleep"),
            ("POST", "collective_rpc"),
            ("GET", "health"),
            ("POST", "v1/chat/completions/../../_sim/faults"),
        ]:
            async with s.request(method, edge + path, json={"error_rate": 1.0}) as r:
                body = await r.json()
                assert r.status == 404, (method, path, r.status)
                assert body["error"]["type"] == "invalid_request_error"
        async with s.delete(edge + "v1/chat/completions") as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
        async with s.get(edge + "v1/models") as r:
            assert r.status == 200  # an inference route: forwarded
        status, _, _ = await ask(s, edge, CLIENT_IP["london"])
        assert status == 200
    assert all(fleet.sim(r, n).faults.error_rate == 0.0 for r in fleet.sims for n in fleet.sims[r])
    after = {(r, n): fleet.sim(r, n).stats.requests for r in fleet.sims for n in fleet.sims[r]}
    assert sum(after.values()) - sum(before.values()) == 1  # the chat completion, nothing else


@pytest.mark.parametrize("ratio", [0.0, 1.0])
async def test_a_clients_trace_context_is_linked_not_obeyed_unless_the_peer_is_trusted(
    tmp_path: Path, serve: ServerFactory, geo_db: Path, ratio: float
) -> None:
    """A client cannot switch tracing on (its cost is the edge's): an untrusted peer's sampled traceparent
    is linked to a trace the edge's own sampler decides on."""
    f = await one_edge(tmp_path, serve, geo_db, {"tracing_sample_ratio": ratio, "tracing_trusted_peers": []})
    client_trace = "6bf92f3577b34da6a3ce929d0e0e4736"
    try:
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await ask(
                s,
                f.edge_url("eu-west-1"),
                CLIENT_IP["london"],
                headers={"traceparent": f"00-{client_trace}-00f067aa0ba902b7-01"},
            )
        assert status == 200 and headers["X-Sim-Trace-Id"] != client_trace
        spans = f.exporter.get_finished_spans()
        if ratio == 0.0:
            assert spans == ()  # nothing recorded: the client's sampled flag did not force it
        else:
            server = next(sp for sp in spans if sp.kind == SpanKind.SERVER)
            assert f"{server.context.trace_id:032x}" != client_trace
            assert [f"{link.context.trace_id:032x}" for link in server.links] == [client_trace]
    finally:
        await f.close()


async def test_metrics_and_the_route_explainer_can_live_on_an_internal_listener(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    internal = free_port()
    f = await one_edge(tmp_path, serve, geo_db, {"internal_port": internal})
    try:
        public = f.edge_url("eu-west-1")
        async with aiohttp.ClientSession() as s:
            for path in ("metrics", "_meridian/route"):
                async with s.get(public + path) as r:
                    assert r.status == 404, path  # not for clients
                async with s.get(f"http://127.0.0.1:{internal}/{path}") as r:
                    assert r.status == 200, path
            for path in ("healthz", "readyz"):  # health checks still reach the public listener
                async with s.get(public + path) as r:
                    assert r.status != 404 and "edge" in await r.json(), path
            async with s.post(f"http://127.0.0.1:{internal}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 404  # the internal listener proxies nothing
    finally:
        await f.close()


async def test_the_explainer_says_a_pin_decided_and_why_each_other_region_is_out(fleet: Fleet) -> None:
    """A Frankfurt client (regions.yaml pins DE to eu-west-1) asked about at the us-east-1 edge: the choice
    says the residency pin made it, and every other region says it is outside the pin."""
    async with aiohttp.ClientSession() as s:
        await warm_up(s, fleet)
        url = fleet.edge_url("us-east-1") + "_meridian/route"
        async with s.get(url, params={"ip": CLIENT_IP["frankfurt"]}) as r:
            body = await r.json()
    assert body["choice"] == "eu-west-1" and body["pinned"] == ["eu-west-1"]
    assert body["replica"]["why"].startswith("data-residency pin (eu-west-1)"), body["replica"]
    out = {x["region"]: x["why_not"] for x in body["scores"] if x["region"] != "eu-west-1"}
    assert out and all(w == "outside the data-residency pin for DE: eu-west-1" for w in out.values()), out
