"""The attempt loop, table-driven: a real client over loopback to a real aiohttp server whose handler runs
the edge's planner and forwarder, with a scripted upstream at the pool seam (``UpstreamPool.request``): each
replica answers as its row says (connect error, time-out, a status, a slow first byte or first event)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edge.admission.geo import ClientPlace
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector, OutlierPolicy
from edge.routing.planner import Planner
from edge.settings import TimeoutSet
from edge.telemetry import tracing
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.observed import Observed
from edge.transport.forwarder import CoalescingStreamResponse, Forwarded, Forwarder, Resilience
from edge.transport.hedging import HedgeBudget, HedgePolicy
from edge.transport.retry_budget import RetryBudget
from edge.transport.upstream import UpstreamError
from fleet.state import Location, Snapshot, Topology, initial_state
from tests.fleet import ServerFactory

TOPO = Topology.model_validate(
    {
        "regions": [
            {
                "name": name,
                "location": loc,
                "failure_domain": name,
                "capacity": 100,
                "replicas": [{"name": f"{name}{i}", "url": f"http://{name}{i}.test"} for i in (1, 2)],
            }
            for name, loc in (
                ("a", {"lat": 0, "lon": 0}),
                ("b", {"lat": 0, "lon": 20}),
                ("c", {"lat": 0, "lon": 60}),
            )
        ]
    }
)
SNAP = Snapshot(version=1, regions={r.name: initial_state(r, now=0.0) for r in TOPO.regions})
PLACE = ClientPlace(Location(lat=0, lon=0), None, None, "geoip")  # nearest a, then b, then c


@pytest.fixture(autouse=True)
def _each_span_ends_once(caplog: pytest.LogCaptureFixture) -> Any:
    yield
    ended_twice = [r.getMessage() for r in caplog.records if "ended span" in r.getMessage()]
    assert not ended_twice, ended_twice


@dataclass
class Behaviour:
    """How one replica answers one request."""

    status: int = 200
    error: str | None = None  # "connect": refused before the headers; "timeout": silent until ttfb_s
    headers_after_s: float = 0.0
    first_event_after_s: float = 0.0
    sse: bool = False


OK = Behaviour()
SSE = Behaviour(sse=True)


class FakeResponse:
    """Stands in for ``UpstreamResponse``: records whether it was released for reuse or closed."""

    def __init__(self, b: Behaviour, log: list[str], url: str) -> None:
        self.status = b.status
        ctype = "text/event-stream" if b.sse else "application/json"
        self.headers = CIMultiDict({"Content-Type": ctype, "X-Replica": url})
        self.content_type = ctype
        self.body = b"data: 1\n\ndata: [DONE]\n\n" if b.sse else b'{"ok": true}'
        self.content_length = None if b.sse else len(self.body)
        self.buffered = 0
        self.complete = not b.sse
        self._b, self._log, self._url = b, log, url
        self._sent = False

    async def readany(self, within_s: float | None = None) -> bytes:
        if self._sent:
            return b""
        try:
            async with asyncio.timeout(within_s):
                await asyncio.sleep(self._b.first_event_after_s)
        except asyncio.CancelledError:
            self._log.append(f"{self._url} cancelled at first event")
            raise
        self._sent = True
        return self.body

    async def read(self) -> bytes:
        return await self.readany()

    async def pump(self, sink: Callable[[bytes], bool]) -> bytes | None:
        while chunk := await self.readany():
            if sink(chunk):
                return None
        return b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def close(self) -> None:
        self._log.append(f"{self._url} closed")

    def release(self) -> None:
        self._log.append(f"{self._url} released")


@dataclass
class ScriptedPool:
    """The pool seam: ``request`` answers per replica URL from ``script`` (the last behaviour repeats)."""

    script: dict[str, list[Behaviour]]
    calls: list[tuple[float, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    async def request(
        self, base_url: str, method: str, path_qs: str, headers: Any, body: bytes, **kw: Any
    ) -> Any:
        self.calls.append((time.monotonic(), base_url))
        seq = self.script.get(base_url, [OK])
        b = seq.pop(0) if len(seq) > 1 else seq[0]
        try:
            if b.error == "timeout":
                await asyncio.sleep(kw["ttfb_s"])
                raise TimeoutError
            await asyncio.sleep(b.headers_after_s)
        except asyncio.CancelledError:
            self.log.append(f"{base_url} cancelled before headers")
            raise
        if b.error == "connect":
            raise UpstreamError("connection refused")
        return FakeResponse(b, self.log, base_url)

    def urls(self) -> list[str]:
        return [u for _, u in self.calls]


class MaxJitter(random.Random):
    """Backoff draws take the top of the jitter range, so the wait between waves is known."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Row:
    script: dict[str, list[Behaviour]]
    hedge_delay_s: float | None = None  # set: a critical request whose first wave may hedge
    budget_ratio: float = 0.2
    budget_floor: float = 3.0
    timeouts: TimeoutSet = field(
        default_factory=lambda: TimeoutSet(connect_s=1, ttfb_s=0.2, idle_s=1, total_s=5)
    )
    backoff_s: float = 0.0


class Rig:
    def __init__(self, row: Row) -> None:
        self.pool = ScriptedPool({k: list(v) for k, v in row.script.items()})
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("test")
        self.metrics = EdgeMetrics(
            snapshot_age=lambda: 0.0, snapshot_version=lambda: 1.0, store_connected=lambda: 1.0
        )
        self.observed = Observed()
        self.outliers = OutlierDetector(policy=OutlierPolicy(), max_ejection_fraction=0.5)
        rng = MaxJitter(1)
        self.hedging = HedgePolicy(budget=HedgeBudget(ratio=1.0, burst=5.0, tokens=5.0))
        res = Resilience(
            outliers=self.outliers,
            budget=RetryBudget(ratio=row.budget_ratio, min_per_s=row.budget_floor),
            rng=rng,
            backoff_base_s=row.backoff_s,
            backoff_cap_s=row.backoff_s,
            replica_counts={r.name: 2 for r in TOPO.regions},
        )
        self.planner = Planner(
            topology=TOPO,
            edge="a",
            outliers=self.outliers,
            failback=Failback(),
            observed=self.observed,
            rng=rng,
            clock=time.monotonic,
            max_attempts=3,
        )
        self.forwarder = Forwarder(
            pool=self.pool,  # type: ignore[arg-type]
            tracer=self.tracer,
            observed=self.observed,
            metrics=self.metrics,
            resilience=res,
            hedging=self.hedging,
            edge_region="a",
        )
        self.row = row

    async def handle(self, request: web.Request) -> web.StreamResponse:
        span = self.tracer.start_span("request")
        try:
            answer = await self.forwarder.forward(
                request,
                plan=self.planner.plan(PLACE, SNAP),
                body=await request.read(),
                headers=b"",
                timeouts=self.row.timeouts,
                hedge_delay_s=self.row.hedge_delay_s,
                parent=span,
            )
            assert isinstance(answer, Forwarded)  # final: the forwarder answers
            return answer.response
        finally:
            span.end()

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def request_span(self) -> dict[str, Any]:
        return dict(
            next(s for s in self.exporter.get_finished_spans() if s.name == "request").attributes or {}
        )


@pytest.fixture
async def serve_rig(serve: ServerFactory) -> Any:
    """Serve a rig for ``row`` (``prepare`` runs on it first); returns the rig and a function that posts
    one chat request to it over loopback."""

    async def start(row: Row, prepare: Any = None) -> tuple[Rig, Any]:
        rig = Rig(row)
        if prepare is not None:
            prepare(rig)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", rig.handle)
        server = await serve(app)

        async def post() -> tuple[aiohttp.ClientResponse, bytes]:
            async with (
                aiohttp.ClientSession() as s,
                s.post(server.make_url("/v1/chat/completions"), json={}) as resp,
            ):
                return resp, await resp.read()

        return rig, post

    return start


@pytest.fixture
async def rig_for(serve_rig: Any) -> Any:
    """Serve a rig for ``row`` and send it one request: (rig, response, body)."""

    async def run(row: Row) -> tuple[Rig, aiohttp.ClientResponse, bytes]:
        rig, post = await serve_rig(row)
        resp, body = await post()
        return rig, resp, body

    return run


A1, A2, B1, B2, C1 = "http://a1.test", "http://a2.test", "http://b1.test", "http://b2.test", "http://c1.test"
TIMEOUT = Behaviour(error="timeout")
CONNECT = Behaviour(error="connect")
ALL_A = {A1: [TIMEOUT], A2: [TIMEOUT]}


async def test_hedged_failure_with_no_retry_budget_is_not_retried(rig_for: Any) -> None:
    row = Row(
        {**ALL_A, B1: [Behaviour(status=503)], B2: [Behaviour(status=503)], C1: [OK]},
        hedge_delay_s=0.01,
        budget_ratio=0.0,
        budget_floor=0.0,
    )
    rig, resp, _ = await rig_for(row)
    assert len(rig.pool.calls) == 2  # the primary and its hedge; no third wave
    assert rig.count("meridian_edge_retry_denied_total", reason="budget") == 1
    assert rig.request_span()[tracing.ATTR_RETRY_DENIED] == "budget"
    assert resp.status == 504  # the primary's time-out ended last


@pytest.mark.parametrize("hedged", [False, True], ids=["plain", "hedged"])
async def test_a_time_to_first_byte_timeout_answers_504_on_every_path(rig_for: Any, hedged: bool) -> None:
    row = Row(
        {**ALL_A, B1: [TIMEOUT], B2: [TIMEOUT], "http://c1.test": [TIMEOUT], "http://c2.test": [TIMEOUT]},
        hedge_delay_s=0.01 if hedged else None,
    )
    rig, resp, body = await rig_for(row)
    assert resp.status == 504, body
    assert b"time to first byte exceeded" in body and b'"error"' in body
    assert len(rig.pool.calls) == 3  # every attempt the plan allows


async def test_the_deadline_stops_retries(rig_for: Any) -> None:
    row = Row(ALL_A, timeouts=TimeoutSet(connect_s=1, ttfb_s=5, idle_s=1, total_s=0.1))
    rig, resp, _ = await rig_for(row)
    assert resp.status == 504
    assert rig.pool.urls() in ([A1], [A2])  # the first attempt used the whole deadline
    assert rig.count("meridian_edge_retry_denied_total", reason="deadline") == 1


async def test_backoff_is_waited_between_waves_and_counted(rig_for: Any) -> None:
    rig, resp, _ = await rig_for(Row({A1: [CONNECT], A2: [CONNECT], B1: [OK], B2: [OK]}, backoff_s=0.15))
    assert resp.status == 200
    (t1, u1), (t2, u2), (t3, u3) = rig.pool.calls
    assert {u1, u2} == {A1, A2} and u3 in (B1, B2)  # a connect failure: once more in a, then b
    assert t2 - t1 >= 0.15 and t3 - t2 >= 0.15
    assert rig.count("meridian_edge_retries_total", reason="connect:same-region") == 1
    assert rig.count("meridian_edge_retries_total", reason="connect:failover") == 1
    assert rig.count("meridian_edge_failovers_total", src="a", dst="b") == 1


async def test_the_hedge_wins_and_the_loser_is_cancelled_and_its_connection_closed(rig_for: Any) -> None:
    slow_stream = Behaviour(sse=True, first_event_after_s=2.0)  # headers at once, first token late
    row = Row({A1: [slow_stream], A2: [slow_stream], B1: [SSE], B2: [SSE]}, hedge_delay_s=0.02)
    rig, resp, body = await rig_for(row)
    assert resp.status == 200 and resp.headers["X-Meridian-Hedged"] == "1"
    assert resp.headers["X-Meridian-Region"] == "b" and body == b"data: 1\n\ndata: [DONE]\n\n"
    loser = rig.pool.urls()[0]
    assert f"{loser} cancelled at first event" in rig.pool.log
    assert f"{loser} closed" in rig.pool.log and f"{loser} released" not in rig.pool.log  # not reused
    assert rig.count("meridian_edge_hedges_total", outcome="cancelled", region="a") == 1
    assert rig.count("meridian_edge_hedges_total", outcome="won", region="b") == 1


def eject_b1_long_ago(rig: Rig) -> None:
    """b1 was ejected and its ejection is over: its breaker is half-open, with one probe slot free."""
    long_ago = time.monotonic() - 30
    for i in range(5):
        rig.outliers.record("b", "b1", False, now=long_ago + i * 0.01, replica_count=2)
    assert rig.outliers.replicas[("b", "b1")].phase == "open"


async def test_a_half_open_probe_slot_is_not_spent_by_a_request_that_never_goes_there(serve_rig: Any) -> None:
    # critical and hedgeable: b is the hedge target, but a answers first and nothing is sent to b
    rig, post = await serve_rig(Row({A1: [OK], A2: [OK]}, hedge_delay_s=0.5), eject_b1_long_ago)
    for _ in range(3):
        resp, _ = await post()
        assert resp.status == 200 and resp.headers["X-Meridian-Region"] == "a"
    assert B1 not in rig.pool.urls()
    assert rig.outliers.replica_admits("b", "b1", time.monotonic())  # the probe is still there to take


async def test_a_half_open_probe_slot_is_taken_by_the_attempt_sent_there(serve_rig: Any) -> None:
    slow_b = Behaviour(headers_after_s=0.3)
    row = Row({A1: [Behaviour(status=503)], A2: [Behaviour(status=503)], B1: [slow_b], B2: [slow_b]})
    rig, post = await serve_rig(row, eject_b1_long_ago)
    request = asyncio.create_task(post())
    deadline = time.monotonic() + 5
    while not any(u.startswith("http://b") for u in rig.pool.urls()):  # the failover has left for b
        assert time.monotonic() < deadline and not request.done(), rig.pool.urls()
        await asyncio.sleep(0.005)
    sent_to = next(u for u in rig.pool.urls() if u.startswith("http://b"))
    if sent_to == B1:  # the probe is in flight: b1 takes nothing more until it answers
        assert not rig.outliers.replica_admits("b", "b1", time.monotonic())
    else:  # P2C chose b2: b1's slot is untouched
        assert rig.outliers.replica_admits("b", "b1", time.monotonic())
    resp, _ = await request
    assert resp.status == 200 and resp.headers["X-Meridian-Region"] == "b"


@pytest.mark.parametrize("coalesce", [True, False])
async def test_the_private_aiohttp_hooks_the_relay_relies_on(serve: ServerFactory, coalesce: bool) -> None:
    """The relay leans on two aiohttp internals: ``StreamResponse._send_headers_immediately`` (False: the
    status line leaves with the first chunk) and the writer's ``output_size`` (reset after a 100 Continue).
    An aiohttp upgrade that changes either fails here, not silently in production."""
    seen: dict[str, int] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = (CoalescingStreamResponse if coalesce else web.StreamResponse)(status=200)
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        seen["after_prepare"] = request.writer.output_size
        await resp.write(b"data: 1\n\n")
        seen["after_write"] = request.writer.output_size
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    server = await serve(app)
    async with aiohttp.ClientSession() as s, s.get(server.make_url("/")) as resp:
        assert await resp.read() == b"data: 1\n\n"
    assert hasattr(web.StreamResponse, "_send_headers_immediately")
    if coalesce:
        assert seen["after_prepare"] == 0  # nothing written yet: the headers wait for the first chunk
    else:
        assert seen["after_prepare"] > 0  # aiohttp's default: headers at once (the control)
    assert seen["after_write"] > len(b"data: 1\n\n")  # headers and the event, counted together
