"""How we send (I/O): run a request's attempts against regional replicas, stream the winner back chunk by
chunk, retry only before the first byte reached the client, one client span per attempt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from edge import tracing
from edge.metrics import EdgeMetrics
from edge.observed import Observed

log = logging.getLogger("meridian.forwarder")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "traceparent",
        "tracestate",
    )
)
PRIORITY_HEADER = "x-meridian-priority"
BUFFER_LIMIT = 1 << 20  # non-streaming upstream bodies up to this size are sent with Content-Length

CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
    ConnectionResetError,
)


@dataclass(frozen=True, slots=True)
class Attempt:
    region: str
    replica: str
    url: str  # replica base URL
    kind: str  # primary | retry


NextAttempt = Callable[[list[Attempt]], Attempt | None]


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    ttfb_s: float
    idle_s: float
    total_s: float


def upstream_headers(incoming: CIMultiDictProxy[str], *, client_ip: str | None) -> CIMultiDict[str]:
    """End-to-end headers only; client-sent X-Meridian-* (but priority) and trace headers are dropped."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in incoming.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk == "x-forwarded-for":
            continue
        if lk.startswith("x-meridian-") and lk != PRIORITY_HEADER:
            continue
        out.add(k, v)
    if client_ip:
        out["X-Forwarded-For"] = client_ip
    return out


def response_headers(upstream: Mapping[str, str], *, keep_length: bool) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in upstream.items():
        lk = k.lower()
        if lk in HOP_BY_HOP and not (keep_length and lk == "content-length"):
            continue
        if lk.startswith("x-meridian-"):
            continue
        out.add(k, v)
    return out


class Forwarder:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tracer: trace.Tracer,
        observed: Observed,
        metrics: EdgeMetrics,
        timeouts: Timeouts,
        edge_region: str,
    ) -> None:
        self.session = session
        self.tracer = tracer
        self.observed = observed
        self.metrics = metrics
        self.timeouts = timeouts
        self.edge_region = edge_region

    async def forward(
        self,
        request: web.Request,
        *,
        body: bytes,
        headers: CIMultiDict[str],
        next_attempt: NextAttempt,
    ) -> web.StreamResponse:
        tried: list[Attempt] = []
        last_error = "no region available"
        path_qs = request.rel_url.raw_path_qs
        while (attempt := next_attempt(tried)) is not None:
            tried.append(attempt)
            if len(tried) > 1:
                self.metrics.retries.labels(reason="connect").inc()
            result = await self._attempt(request, attempt, tried, body=body, headers=headers, path_qs=path_qs)
            if isinstance(result, web.StreamResponse):
                return result
            last_error = result
        self.metrics.requests.labels(region="none", code="502").inc()
        return web.json_response(
            {
                "error": {
                    "message": f"no upstream could take the request: {last_error}",
                    "type": "meridian_upstream",
                }
            },
            status=502,
            headers=self._meridian_headers(None, len(tried)),
        )

    def _meridian_headers(self, region: str | None, attempts: int) -> dict[str, str]:
        h = {"X-Meridian-Edge": self.edge_region, "X-Meridian-Attempts": str(attempts)}
        if region:
            h["X-Meridian-Region"] = region
        return h

    async def _attempt(
        self,
        request: web.Request,
        attempt: Attempt,
        tried: list[Attempt],
        *,
        body: bytes,
        headers: CIMultiDict[str],
        path_qs: str,
    ) -> web.StreamResponse | str:
        """Run one attempt; returns the client response once committed, or an error text to try again."""
        to = self.timeouts
        span = self.tracer.start_span(
            tracing.SPAN_ATTEMPT,
            kind=SpanKind.CLIENT,
            attributes={
                tracing.ATTR_REGION: attempt.region,
                tracing.ATTR_REPLICA: attempt.replica,
                tracing.ATTR_ATTEMPT: len(tried),
                tracing.ATTR_ATTEMPT_KIND: attempt.kind,
                "http.request.method": request.method,
                "url.full": attempt.url + path_qs,
            },
        )
        ctx = trace.set_span_in_context(span)
        out_headers = CIMultiDict(headers)
        tracing.PROPAGATOR.inject(out_headers, context=ctx)
        self.observed.start(attempt.region, attempt.replica)
        started = time.monotonic()
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(to.ttfb_s):
                    upstream = await self.session.request(
                        request.method,
                        attempt.url + path_qs,
                        data=body if body else None,
                        headers=out_headers,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(
                            total=None, sock_connect=to.connect_s, sock_read=to.idle_s
                        ),
                    )
            except (*CONNECT_ERRORS, TimeoutError) as exc:
                reason = "ttfb timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                self._failed(attempt, span, reason)
                return f"{attempt.region}/{attempt.replica}: {reason}"
            ttfb = time.monotonic() - started
            self.metrics.ttfb.labels(region=attempt.region).observe(ttfb)
            span.set_attribute("http.response.status_code", upstream.status)
            self.observed.record(attempt.region, ttfb_ms=ttfb * 1000.0, error=upstream.status >= 500)
            self.metrics.attempts.labels(
                region=attempt.region, kind=attempt.kind, outcome=str(upstream.status)
            ).inc()
            self.metrics.requests.labels(region=attempt.region, code=str(upstream.status)).inc()
            return await self._relay(request, upstream, attempt, len(tried), span)
        finally:
            if upstream is not None:
                upstream.release()
            self.observed.finish(attempt.region, attempt.replica)
            span.end()

    def _failed(self, attempt: Attempt, span: trace.Span, reason: str) -> None:
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute(tracing.ATTR_OUTCOME, reason)
        self.observed.record(attempt.region, ttfb_ms=None, error=True)
        self.metrics.attempts.labels(region=attempt.region, kind=attempt.kind, outcome="error").inc()
        log.info("attempt on %s/%s failed before any byte: %s", attempt.region, attempt.replica, reason)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        attempt: Attempt,
        attempts: int,
        span: trace.Span,
    ) -> web.StreamResponse:
        """Committed: copy status and headers, then the body (buffered when small, else chunk by chunk)."""
        meridian = self._meridian_headers(attempt.region, attempts)
        length = upstream.content_length
        streaming = upstream.content_type == "text/event-stream" or length is None or length > BUFFER_LIMIT
        if not streaming:
            try:
                async with asyncio.timeout(self.timeouts.total_s):
                    data = await upstream.read()
            except (*CONNECT_ERRORS, TimeoutError) as exc:
                # nothing has reached the client yet, but the upstream already committed: report it
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
            hdrs = response_headers(upstream.headers, keep_length=False)
            hdrs.update(meridian)
            return web.Response(body=data, status=upstream.status, headers=hdrs)
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        resp.headers.update(response_headers(upstream.headers, keep_length=False))
        resp.headers.update(meridian)
        await resp.prepare(request)
        deadline = time.monotonic() + self.timeouts.total_s
        try:
            async for chunk in upstream.content.iter_any():
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
        request: web.Request,
        upstream: aiohttp.ClientResponse,
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
