"""How we send (I/O): run a request's attempt plan against regional replicas — retry on another replica,
fail over to the next region, with backoff, a retry budget and one deadline — only before the first byte
reached the client; then stream the winner back chunk by chunk. One client span per attempt."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from edge import tracing
from edge.budget import RetryBudget, backoff_s
from edge.hedging import QuantileWindow
from edge.metrics import EdgeMetrics
from edge.observed import Observed
from edge.outlier import OutlierDetector
from edge.routing import Tried
from edge.settings import TimeoutSet
from edge.upstream import UpstreamError, UpstreamPool, UpstreamResponse, encode_header_text

log = logging.getLogger("meridian.forwarder")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "traceparent", "tracestate", "Expect",
    )
)  # fmt: skip
PRIORITY_HEADER = "x-meridian-priority"
BUFFER_LIMIT = 1 << 20  # non-streaming upstream bodies up to this size are sent with Content-Length
RETRYABLE_STATUS = frozenset({502, 503, 504})
ATTR_WINNER = "meridian.attempt.winner"
ATTR_CANCELLED = "meridian.attempt.cancelled"

# refused, reset, unreachable, cut off mid-response (catch TimeoutError, also an OSError, before these)
CONNECT_ERRORS = (UpstreamError, OSError)


@dataclass(frozen=True, slots=True)
class Attempt:
    region: str
    replica: str
    url: str  # replica base URL
    kind: str  # primary | retry | failover


NextAttempt = Callable[[list[Tried]], Attempt | None]


@dataclass(slots=True)
class Resilience:
    """The edge's passive view and retry policy, shared by every request."""

    outliers: OutlierDetector
    budget: RetryBudget
    rng: random.Random
    backoff_base_s: float
    backoff_cap_s: float
    replica_counts: dict[str, int]
    ttfb: dict[str, QuantileWindow] = field(default_factory=dict)

    def observe_ttfb(self, region: str, seconds: float) -> None:
        self.ttfb.setdefault(region, QuantileWindow()).add(seconds)


@dataclass(slots=True)
class HedgePlan:
    """Send ``target`` if the primary has no first byte within ``delay_s`` and ``allow()`` says so."""

    delay_s: float
    target: Attempt | None
    allow: Callable[[], bool]


class _Failed(Exception):
    def __init__(self, failure: str, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.failure = failure
        self.status = status


@dataclass(slots=True)
class _Won:
    attempt: Attempt
    upstream: UpstreamResponse
    first: bytes | None
    span: trace.Span


def upstream_headers(incoming: CIMultiDictProxy[str], *, client_ip: str | None) -> bytes:
    """End-to-end headers only, encoded once per request as the upstream request's header lines
    (``\r\nName: value`` each, in the client's own bytes); client-sent X-Meridian-* (but priority) and trace
    headers are dropped, X-Forwarded-For becomes the client address we resolved."""
    lines = []
    for k, v in incoming.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk == "x-forwarded-for":
            continue
        if lk.startswith("x-meridian-") and lk != PRIORITY_HEADER:
            continue
        lines.append(f"\r\n{k}: {v}")
    if client_ip:
        lines.append(f"\r\nX-Forwarded-For: {client_ip}")
    return encode_header_text("".join(lines))


def copy_response_headers(upstream: Mapping[str, str], out: CIMultiDict[str]) -> None:
    """End-to-end response headers into ``out`` (the client response's own); the region's X-Meridian-* are
    dropped, ours are set after."""
    for k, v in upstream.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk.startswith("x-meridian-"):
            continue
        out.add(k, v)


class _CoalescingStreamResponse(web.StreamResponse):
    """Headers leave with the first body chunk: one write, so a stream's first event reaches the client in
    the same packet as the status line (aiohttp's switch for this; web.Response sets it too). Used only when
    that chunk is already in hand."""

    _send_headers_immediately = False


class _Once:
    """A call that runs at most once, whoever asks first (the loop's callback or the relay's end)."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., None], *args: object) -> None:
        self.fn: Callable[..., None] | None = fn
        self.args = args

    def __call__(self) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn(*self.args)


class Forwarder:
    def __init__(
        self,
        *,
        pool: UpstreamPool,
        tracer: trace.Tracer,
        observed: Observed,
        metrics: EdgeMetrics,
        resilience: Resilience,
        edge_region: str,
    ) -> None:
        self.pool = pool
        self.tracer = tracer
        self.observed = observed
        self.metrics = metrics
        self.res = resilience
        self.edge_region = edge_region

    def _meridian_headers(self, region: str | None, attempts: int) -> dict[str, str]:
        h = {"X-Meridian-Edge": self.edge_region, "X-Meridian-Attempts": str(attempts)}
        if region:
            h["X-Meridian-Region"] = region
        return h

    def _attempt_span(
        self, parent: trace.Span, attempt: Attempt, number: int, kind: str, method: str, path_qs: str
    ) -> trace.Span:
        """One client span per attempt, child of the request's span. An unsampled request records nothing:
        its own (non-recording) span stands in, so the region still gets the request's trace id."""
        if not parent.is_recording():
            return parent
        return self.tracer.start_span(
            tracing.SPAN_ATTEMPT,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                tracing.ATTR_REGION: attempt.region,
                tracing.ATTR_REPLICA: attempt.replica,
                tracing.ATTR_ATTEMPT: number,
                tracing.ATTR_ATTEMPT_KIND: kind,
                "http.request.method": method,
                "url.full": attempt.url + path_qs,
            },
        )

    def _record(self, attempt: Attempt, ok: bool) -> None:
        count = self.res.replica_counts.get(attempt.region, 1)
        ejected = self.res.outliers.record(
            attempt.region, attempt.replica, ok, now=time.monotonic(), replica_count=count
        )
        for level in ejected:
            self.metrics.ejections.labels(level=level, region=attempt.region).inc()
            log.warning("ejected %s %s/%s after passive failures", level, attempt.region, attempt.replica)

    def _account(
        self, attempt: Attempt, span: trace.Span, status: int | None, ttfb: float, failure: str | None
    ) -> None:
        """One attempt's outcome into the metrics, the TTFB windows, the breakers and the observations (the
        same for plain and hedged attempts)."""
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            self.metrics.child(self.metrics.ttfb, attempt.region).observe(ttfb)
            if status < 500:
                self.res.observe_ttfb(attempt.region, ttfb)
        ok = failure is None and status is not None and status < 500
        self._record(attempt, ok)
        self.observed.record(attempt.region, ttfb_ms=ttfb * 1000.0 if ok else None, error=not ok)
        outcome = str(status) if status is not None else failure or "error"
        self.metrics.child(self.metrics.attempts, attempt.region, attempt.kind, outcome).inc()
        span.set_attribute(tracing.ATTR_OUTCOME, outcome)

    def _committed(self, attempt: Attempt, span: trace.Span, status: int, ttfb: float) -> None:
        self._account(attempt, span, status, ttfb, None)
        self.metrics.child(self.metrics.requests, attempt.region, str(status)).inc()
        span.set_attribute("meridian.committed", True)

    async def forward(
        self,
        request: web.BaseRequest,
        *,
        body: bytes,
        headers: bytes,
        next_attempt: NextAttempt,
        timeouts: TimeoutSet,
        hedge: HedgePlan | None = None,
        parent: trace.Span = trace.INVALID_SPAN,
    ) -> web.StreamResponse:
        """Run attempts until one commits; retry/fail over only before any byte reached the client."""
        started = time.monotonic()
        deadline = started + timeouts.total_s
        self.res.budget.deposit(started)
        tried: list[Tried] = []
        path_qs = request.rel_url.raw_path_qs
        last_error = "no routable region"
        last_status = 502
        if hedge is not None:
            won = await self._hedged(
                request,
                body=body,
                headers=headers,
                next_attempt=next_attempt,
                timeouts=timeouts,
                hedge=hedge,
                tried=tried,
                deadline=deadline,
                path_qs=path_qs,
                parent=parent,
            )
            if isinstance(won, web.StreamResponse):
                return won
            if tried:
                last_error = "hedged attempts failed"
        attempt = next_attempt(tried)
        while attempt is not None:
            current = attempt
            span = self._attempt_span(parent, attempt, len(tried) + 1, attempt.kind, request.method, path_qs)
            self.observed.start(attempt.region, attempt.replica)
            t0 = time.monotonic()
            upstream: UpstreamResponse | None = None
            failure: str | None = None
            try:
                try:
                    upstream = await self._send(
                        request,
                        attempt,
                        span,
                        body=body,
                        headers=headers,
                        timeouts=timeouts,
                        path_qs=path_qs,
                        ttfb_s=max(0.001, min(timeouts.ttfb_s, deadline - t0)),
                    )
                except TimeoutError:
                    failure, last_error, last_status = "timeout", "time to first byte exceeded", 504
                except CONNECT_ERRORS as exc:
                    failure, last_error, last_status = "connect", type(exc).__name__, 502
                ttfb = time.monotonic() - t0
                if upstream is not None and upstream.status in RETRYABLE_STATUS:
                    failure, last_error = "status", f"upstream status {upstream.status}"
                if failure is None and upstream is not None:
                    # committed: the client's first byte goes first, this attempt's bookkeeping right after
                    # it (next loop turn, or when the relay ends, whichever is sooner)
                    book = _Once(self._committed, attempt, span, upstream.status, ttfb)
                    request.task.get_loop().call_soon(book)
                    try:
                        return await self._relay(
                            request, upstream, attempt, len(tried) + 1, span, deadline=deadline
                        )
                    finally:
                        book()
                self._account(attempt, span, upstream.status if upstream is not None else None, ttfb, failure)
                if failure is not None:
                    span.set_status(Status(StatusCode.ERROR, last_error))
                    tried.append(Tried(attempt.region, attempt.replica, failure))
                    nxt = next_attempt(tried)
                    now = time.monotonic()
                    if nxt is not None and now < deadline and self.res.budget.try_withdraw(now):
                        where = "same-region" if nxt.region == attempt.region else "failover"
                        self.metrics.retries.labels(reason=f"{failure}:{where}").inc()
                        if nxt.region != attempt.region:
                            self.metrics.failovers.labels(src=attempt.region, dst=nxt.region).inc()
                        if upstream is not None:
                            upstream.close()
                            upstream = None
                        delay = backoff_s(
                            len(tried),
                            base_s=self.res.backoff_base_s,
                            cap_s=self.res.backoff_cap_s,
                            rng=self.res.rng,
                        )
                        await asyncio.sleep(min(delay, max(0.0, deadline - now)))
                        attempt = nxt
                        continue
                    if nxt is not None:
                        why = "deadline" if now >= deadline else "budget"
                        self.metrics.retry_denied.labels(reason=why).inc()
                        span.set_attribute("meridian.retry_denied", why)
                if upstream is None:
                    break
                # a failed attempt's answer goes to the client (a 503) when no retry was possible
                self.metrics.child(self.metrics.requests, attempt.region, str(upstream.status)).inc()
                span.set_attribute("meridian.committed", True)
                return await self._relay(request, upstream, attempt, len(tried), span, deadline=deadline)
            finally:
                if upstream is not None:
                    upstream.release()
                self.observed.finish(current.region, current.replica)
                span.end()
        self.metrics.requests.labels(region="none", code=str(last_status)).inc()
        return web.json_response(
            {
                "error": {
                    "message": f"no upstream could take the request: {last_error}",
                    "type": "meridian_upstream",
                }
            },
            status=last_status,
            headers=self._meridian_headers(None, len(tried)),
        )

    async def _send(
        self,
        request: web.BaseRequest,
        attempt: Attempt,
        span: trace.Span,
        *,
        body: bytes,
        headers: bytes,
        timeouts: TimeoutSet,
        path_qs: str,
        ttfb_s: float | None = None,
    ) -> UpstreamResponse:
        """Send one attempt upstream with the attempt span's traceparent; returns at response headers."""
        return await self.pool.request(
            attempt.url,
            request.method,
            path_qs,
            tracing.trace_headers(span),
            body,
            header_block=headers,
            connect_s=timeouts.connect_s,
            idle_s=timeouts.idle_s,
            ttfb_s=ttfb_s,
        )

    async def _first_byte(
        self,
        request: web.BaseRequest,
        attempt: Attempt,
        span: trace.Span,
        *,
        body: bytes,
        headers: bytes,
        timeouts: TimeoutSet,
        deadline: float,
        path_qs: str,
    ) -> _Won:
        """One hedged attempt up to its first byte: response headers, and for a stream its first event."""
        t0 = time.monotonic()
        upstream: UpstreamResponse | None = None
        try:
            async with asyncio.timeout(max(0.001, min(timeouts.ttfb_s, deadline - t0))):
                upstream = await self._send(
                    request, attempt, span, body=body, headers=headers, timeouts=timeouts, path_qs=path_qs
                )
                if upstream.status in RETRYABLE_STATUS:
                    raise _Failed("status", f"upstream status {upstream.status}")
                first = None
                if upstream.content_type == "text/event-stream":
                    first = await upstream.readany()
            self._account(attempt, span, upstream.status, time.monotonic() - t0, None)
            return _Won(attempt, upstream, first, span)
        except BaseException as exc:
            if upstream is not None:
                upstream.close()  # a loser or a failure: drop the connection so the region stops generating
            if isinstance(exc, _Failed):
                failed = exc
            elif isinstance(exc, TimeoutError):
                failed = _Failed("timeout", "time to first byte exceeded", 504)
            elif isinstance(exc, CONNECT_ERRORS):
                failed = _Failed("connect", type(exc).__name__)
            else:
                raise  # cancelled (the loser of a race): the winner is accounted, this one never answered
            status = upstream.status if upstream is not None and failed.failure == "status" else None
            self._account(attempt, span, status, time.monotonic() - t0, failed.failure)
            raise failed from None

    async def _hedged(
        self,
        request: web.BaseRequest,
        *,
        body: bytes,
        headers: bytes,
        next_attempt: NextAttempt,
        timeouts: TimeoutSet,
        hedge: HedgePlan,
        tried: list[Tried],
        deadline: float,
        path_qs: str,
        parent: trace.Span,
    ) -> web.StreamResponse | None:
        """Primary, plus a hedge to the backup region if no first byte within the delay; the first to produce
        a first byte wins and the other is cancelled at once. None: both failed (``tried`` says how)."""
        primary = next_attempt(tried)
        if primary is None:
            return None
        running: dict[asyncio.Task[_Won], tuple[Attempt, trace.Span]] = {}

        def launch(att: Attempt, kind: str) -> None:
            span = self._attempt_span(parent, att, len(running) + 1, kind, request.method, path_qs)
            self.observed.start(att.region, att.replica)
            task = asyncio.create_task(
                self._first_byte(
                    request,
                    att,
                    span,
                    body=body,
                    headers=headers,
                    timeouts=timeouts,
                    deadline=deadline,
                    path_qs=path_qs,
                )
            )
            running[task] = (att, span)

        launch(primary, "primary")
        hedged = False
        done, _ = await asyncio.wait(set(running), timeout=hedge.delay_s)
        if not done and hedge.target is not None and hedge.allow():
            hedged = True
            self.metrics.hedges.labels(outcome="sent", region=hedge.target.region).inc()
            launch(hedge.target, "hedge")
        pending = set(running)
        winner: tuple[asyncio.Task[_Won], _Won] | None = None
        try:
            while pending and winner is None:
                done, pending = await asyncio.wait(
                    pending,
                    return_when=asyncio.FIRST_COMPLETED,
                    timeout=max(0.001, deadline - time.monotonic()),
                )
                if not done:
                    break
                for task in done:
                    att, span = running[task]
                    exc = task.exception()
                    if exc is None and winner is None:
                        winner = (task, task.result())
                        continue
                    if isinstance(exc, _Failed):  # accounted by _first_byte
                        failure = exc.failure
                    else:  # a bug, not the region: still a failed attempt
                        failure = "error"
                        self._account(att, span, None, 0.0, failure)
                    self.observed.finish(att.region, att.replica)
                    tried.append(Tried(att.region, att.replica, failure))
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    span.end()
        finally:
            for task in pending:  # the losers: cancel now, so their connections close and regions stop
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for task in pending:
                att, span = running[task]
                self.observed.finish(att.region, att.replica)
                span.set_attribute(ATTR_CANCELLED, True)
                span.set_attribute(ATTR_WINNER, False)
                span.end()
                self.metrics.hedges.labels(outcome="cancelled", region=att.region).inc()
        if winner is None:
            return None
        task, won = winner
        att = won.attempt
        won.span.set_attribute(ATTR_WINNER, True)
        if hedged and running[task][0] is not primary:
            self.metrics.hedges.labels(outcome="won", region=att.region).inc()
        self.metrics.child(self.metrics.requests, att.region, str(won.upstream.status)).inc()
        try:
            return await self._relay(
                request,
                won.upstream,
                att,
                len(running),
                won.span,
                deadline=deadline,
                first=won.first,
                hedged=hedged,
            )
        finally:
            won.upstream.release()
            self.observed.finish(att.region, att.replica)
            won.span.end()

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        attempt: Attempt,
        attempts: int,
        span: trace.Span,
        *,
        deadline: float,
        first: bytes | None = None,
        hedged: bool = False,
    ) -> web.StreamResponse:
        """Committed: copy status and headers, then the body (buffered when small, else chunk by chunk)."""
        meridian = self._meridian_headers(attempt.region, attempts)
        if hedged:
            meridian["X-Meridian-Hedged"] = "1"
        length = upstream.content_length
        streaming = upstream.content_type == "text/event-stream" or length is None or length > BUFFER_LIMIT
        if not streaming and first is None:
            try:
                if upstream.complete:  # the whole body came with the headers: nothing to wait for
                    data = await upstream.read()
                else:
                    async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                        data = await upstream.read()
            except (*CONNECT_ERRORS, TimeoutError) as exc:
                self.metrics.stream_aborts.labels(region=attempt.region, side="upstream").inc()
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                return web.json_response(
                    {
                        "error": {
                            "message": f"upstream {attempt.region} broke off its response",
                            "type": "meridian_upstream",
                        }
                    },
                    status=502,
                    headers=meridian,
                )
            small = web.Response(body=data, status=upstream.status)
            copy_response_headers(upstream.headers, small.headers)
            small.headers.update(meridian)
            return small
        # headers wait for the first chunk only when it is already here: a region slow to its first token
        # still gets the status line to the client at once
        kind = _CoalescingStreamResponse if first or upstream.buffered else web.StreamResponse
        resp = kind(status=upstream.status)
        copy_response_headers(upstream.headers, resp.headers)
        resp.headers.update(meridian)
        await resp.prepare(request)
        try:
            if first:
                await resp.write(first)
            async for chunk in upstream:
                await resp.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError("total timeout")
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            if request.transport is None or request.transport.is_closing():
                self.metrics.stream_aborts.labels(region=attempt.region, side="client").inc()
                span.set_attribute(tracing.ATTR_OUTCOME, "client went away")
                upstream.close()  # stop the region generating tokens nobody reads
                return resp
            return self._cut(request, upstream, attempt, span, exc, resp)
        except (*CONNECT_ERRORS, TimeoutError) as exc:
            return self._cut(request, upstream, attempt, span, exc, resp)
        await resp.write_eof()
        return resp

    def _cut(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        attempt: Attempt,
        span: trace.Span,
        exc: BaseException,
        resp: web.StreamResponse,
    ) -> web.StreamResponse:
        """The upstream failed after the client got bytes: no retry; drop the client connection so the
        truncation is visible (a clean end-of-stream would pass it off as complete)."""
        self.metrics.stream_aborts.labels(region=attempt.region, side="upstream").inc()
        span.set_status(Status(StatusCode.ERROR, f"stream cut: {type(exc).__name__}"))
        upstream.close()
        if request.transport is not None:
            request.transport.abort()
        return resp
