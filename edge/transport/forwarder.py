"""How we send (I/O): run a request's attempt plan against regional replicas, wave by wave — a wave is one
attempt, or a primary plus its hedge — with the same gate before every wave after the first (deadline,
retry budget, backoff with jitter, metrics); only before the first byte reached the client. Then stream the
winner back chunk by chunk. One client span per attempt; every outcome classified by
``edge.routing.outcome``."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from edge.admission.tenants import Standing
from edge.errors import error
from edge.routing.outcome import (
    CONTEXT,
    FIRST_TOKEN,
    NO_REPLICA,
    TIMEOUT,
    Outcome,
    answered,
    context_exceeded,
    cut,
    raised,
)
from edge.routing.outlier import OutlierDetector
from edge.routing.ranking import Attempt, AttemptPlan
from edge.settings import TimeoutSet
from edge.telemetry import tracing
from edge.telemetry.answer import EdgeRequest
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.observed import Observed
from edge.telemetry.usage import Tally
from edge.transport.continuation import Continuable, Sent, Stitch, continuation_body, partial_of
from edge.transport.hedging import HedgePolicy
from edge.transport.relay import Relay
from edge.transport.retry_budget import RetryBudget, backoff_s
from edge.transport.sse import DONE, EventFrames
from edge.transport.upstream import UpstreamPool, UpstreamResponse, encode_header_text

log = logging.getLogger("meridian.forwarder")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "traceparent", "tracestate", "Expect",
    )
)  # fmt: skip
PRIORITY_HEADER = "x-meridian-priority"
REVOKED_EVENT = (
    b'data: {"error": {"message": "The API key was revoked while this answer streamed", '
    b'"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}\n\ndata: [DONE]\n\n'
)
# what a client could claim its address is: the edge alone says it upstream (X-Forwarded-For, resolved)
CLIENT_ADDRESS = frozenset({"x-forwarded-for", "x-real-ip", "forwarded"})
_NONE: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=256)
def _connection_tokens(value: str) -> frozenset[str]:
    """Header names a Connection header lists (RFC 9110 7.6.1: they are dropped when forwarding)."""
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


BUFFER_LIMIT = 1 << 20  # non-streaming upstream bodies up to this size are sent with Content-Length
CHAT = "/v1/chat/completions"  # the route whose streams can go on elsewhere after a cut
ERROR_BODY_LIMIT = 1 << 16  # a 400's body up to this size is read to tell a context error
NOWHERE = Continuable()  # no stream goes on elsewhere
OPENAI_STREAMS = (CHAT, "/v1/completions")  # streams that end with `data: [DONE]`


class ShortStream(ConnectionError):
    """A stream ended cleanly before its answer did (no finish reason, no ``[DONE]``): a cut."""


STREAM_ERRORS = (OSError, TimeoutError)  # a body read that broke off (the pool raises ConnectionErrors)


@dataclass(slots=True)
class Resilience:
    """The edge's passive view and retry policy, shared by every request."""

    outliers: OutlierDetector
    budget: RetryBudget
    rng: random.Random
    backoff_base_s: float
    backoff_cap_s: float
    replica_counts: dict[str, int]


@dataclass(slots=True)
class Call:
    """One client request as the attempts see it: what to send, where the deadline is, the request span."""

    request: web.BaseRequest
    body: bytes
    headers: bytes
    timeouts: TimeoutSet
    deadline: float
    path_qs: str
    parent: trace.Span
    model: str | None = None  # the model served (X-Meridian-Model)
    extra: dict[str, str] | None = None  # e.g. the tenant's rate-limit headers
    tally: Tally | None = None  # counts the answer's tokens (limits and usage accounting)
    standing: Standing | None = None  # whether its key still holds (streams of a revoked key end)
    sent: int = 0  # attempts made so far (X-Meridian-Attempts)
    hedged: bool = False
    larger_context: bool = False  # a fallback with a larger context exists: a context 400 is not final
    plan: AttemptPlan | None = None  # where a broken-off stream may continue


@dataclass(frozen=True, slots=True)
class Exhausted:
    """Every attempt at the model failed before the client saw a byte (``cause``: the last outcome's kind,
    e.g. "context"); the caller has another model to try."""

    cause: str


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's init costs 3x)
class Forwarded:
    """What a request got: the response, the region that answered (None: none did) and whether it is an
    error for the client — decided by the outcome sink (``edge.routing.outcome``), also for a stream the
    region broke off after the first byte."""

    response: web.StreamResponse
    region: str | None
    failed: bool

    @classmethod
    def local(cls, response: web.StreamResponse) -> Forwarded:
        """An answer the edge gave itself (a refusal, shed, no region): no region, its status says."""
        return cls(response, None, response.status >= 400)


@dataclass(slots=True)
class Result:
    """One attempt up to its first byte: its outcome, and the region's response when it answered."""

    attempt: Attempt
    span: trace.Span
    outcome: Outcome
    ttfb: float
    upstream: UpstreamResponse | None
    started: float  # monotonic time the attempt left
    first: bytes | None = None  # a stream's first event, read to judge the attempt (first-token limit)
    retry_after_s: float = 0.0  # a throttled replica's Retry-After (0: none given)
    body: bytes | None = None  # a small 400's body, read to tell a context error
    continued: bool = False  # broken off, and another replica went on: the client's answer is whole


def upstream_headers(
    incoming: CIMultiDictProxy[str],
    *,
    client_ip: str | None,
    edge: str,
    credential: str | None = None,
    keep_authorization: bool = True,
    priority: str | None = None,
) -> bytes:
    """End-to-end headers only, encoded once per request as the upstream request's header lines
    (``\r\nName: value`` each, in the client's own bytes); client-sent X-Meridian-* and trace headers are
    dropped (the priority is the one admission decided: the client's ask capped by its tenant's ceiling),
    X-Forwarded-For becomes the client address we resolved, and X-Meridian-Edge names this edge to the
    region. With authentication on (``keep_authorization`` false) the client's key never
    leaves the edge: the region gets its own ``credential`` instead, when one is set."""
    lines = []
    connection = incoming.get("Connection")
    named = _connection_tokens(connection) if connection else _NONE  # hop-by-hop by the client's say-so
    for k, v in incoming.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in CLIENT_ADDRESS or lk in named:
            continue
        if lk.startswith("x-meridian-") and (priority is not None or lk != PRIORITY_HEADER):
            continue
        if lk == "authorization" and not keep_authorization:
            continue
        lines.append(f"\r\n{k}: {v}")
    if credential is not None:
        lines.append(f"\r\nAuthorization: Bearer {credential}")
    if client_ip:
        lines.append(f"\r\nX-Forwarded-For: {client_ip}")
    if priority is not None:
        lines.append(f"\r\nX-Meridian-Priority: {priority}")
    lines.append(f"\r\nX-Meridian-Edge: {edge}")
    return encode_header_text("".join(lines))


def copy_response_headers(upstream: Mapping[str, str], out: CIMultiDict[str]) -> None:
    """End-to-end response headers into ``out`` (the client response's own); the region's X-Meridian-* are
    dropped, ours are set after."""
    for k, v in upstream.items():
        lk = k.lower()
        if lk in HOP_BY_HOP or lk.startswith("x-meridian-"):
            continue
        out.add(k, v)


class CoalescingStreamResponse(web.StreamResponse):
    """Headers leave with the first body chunk: one write, so a stream's first event reaches the client in
    the same packet as the status line (aiohttp's switch for this; web.Response sets it too). Used only when
    that chunk is already in hand."""

    _send_headers_immediately = False


THROTTLE_HOLD_S = 1.0  # a 429 without Retry-After: its replica gets no new request for this long
MOST_RETRY_AFTER_S = 3600.0


def retry_after_s(value: str | None) -> float:
    """A Retry-After in seconds (the delta-seconds form; an HTTP date or garbage: 0, none given)."""
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return min(MOST_RETRY_AFTER_S, seconds) if seconds > 0 else 0.0  # NaN and negatives: none


def _wins(r: Result, call: Call) -> bool:
    """The attempt's answer goes to the client: a region's answer with nothing to retry (a context 400 only
    when no larger-context fallback could take the request)."""
    return r.outcome.committable and not (r.outcome.kind == "context" and call.larger_context)


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
        hedging: HedgePolicy,
        edge_region: str,
        replica_header: bool = True,
        continuable: Continuable = NOWHERE,
    ) -> None:
        self.replica_header = replica_header
        self.pool = pool
        self.tracer = tracer
        self.observed = observed
        self.metrics = metrics
        self.res = resilience
        self.hedging = hedging
        self.edge_region = edge_region
        self.continuable = continuable  # where a broken-off stream may go on

    async def forward(
        self,
        request: web.BaseRequest,
        *,
        plan: AttemptPlan,
        body: bytes,
        headers: bytes,
        timeouts: TimeoutSet,
        hedge_delay_s: float | None = None,
        parent: trace.Span = trace.INVALID_SPAN,
        model: str | None = None,
        extra_headers: dict[str, str] | None = None,
        tally: Tally | None = None,
        standing: Standing | None = None,
        final: bool = True,
        larger_context: bool = False,
    ) -> Forwarded | Exhausted:
        """Run the plan wave by wave until one attempt commits. ``hedge_delay_s``: the first wave may add a
        hedge after that long without a first byte. When no attempt commits: the last answer or an error
        (``final``), else ``Exhausted`` — the caller has another model to try, the client has seen nothing
        (``larger_context``: one with a larger context, so a context 400 is not final either)."""
        started = time.monotonic()
        self.res.budget.deposit(started)
        deadline, path = started + timeouts.total_s, request.rel_url.raw_path_qs
        call = Call(
            request, body, headers, timeouts, deadline, path, parent, model, extra_headers, tally, standing
        )
        call.larger_context, call.plan = larger_context, plan
        won, last = None, None
        attempt = plan.next()
        while attempt is not None:  # wave after wave until one attempt wins or no more may be made
            if call.sent:  # every wave after the first passes the same gate
                wait = self._gate(call, last, attempt)
                if wait is None:
                    break
                if last is not None:
                    self._drop(last)
                    last = None
                await asyncio.sleep(wait)
            if hedge_delay_s is not None and not call.sent:
                won, failed = await self._race(call, plan, attempt, hedge_delay_s)
            else:
                won, failed = await self._single(call, attempt)
            if won is not None:
                return await self._commit(call, won)
            for r in failed[:-1]:
                self._drop(r)
            for r in failed:
                plan.failed(r.attempt, r.outcome.kind)
            if failed:
                last = failed[-1]
            attempt = plan.next()
        if not final or (last is not None and last.outcome.kind == "context" and larger_context):
            if last is not None:
                self._drop(last)
            return Exhausted(last.outcome.kind if last is not None else "error")
        return await self._give_up(call, last)

    def _gate(self, call: Call, last: Result | None, nxt: Attempt) -> float | None:
        """Before every wave after the first: the deadline and the retry budget decide; returns the backoff
        to wait, or None when no more attempts may be made."""
        now = time.monotonic()
        denied = "deadline" if now >= call.deadline or last is None else None
        same = last is not None and (last.attempt.region, last.attempt.replica) == (nxt.region, nxt.replica)
        wait_for_it = last.retry_after_s if last is not None and same else 0.0  # it asked: never sooner
        if denied is None and now + wait_for_it >= call.deadline:
            denied = "deadline"
        if denied is None and not self.res.budget.try_withdraw(now):
            denied = "budget"
        if denied is not None or last is None:
            self.metrics.retry_denied.labels(reason=denied or "deadline").inc()
            call.parent.set_attribute(tracing.ATTR_RETRY_DENIED, denied or "deadline")
            return None
        src, dst = last.attempt.region, nxt.region
        where = "same-region" if src == dst else "failover"
        self.metrics.retries.labels(reason=f"{last.outcome.kind}:{where}").inc()
        if src != dst:
            self.metrics.failovers.labels(src=src, dst=dst).inc()
        call.parent.set_attribute(tracing.ATTR_RETRIES, call.sent)
        res = self.res
        delay = backoff_s(call.sent, base_s=res.backoff_base_s, cap_s=res.backoff_cap_s, rng=res.rng)
        return min(max(delay, wait_for_it), max(0.0, call.deadline - now))

    async def _single(self, call: Call, attempt: Attempt) -> tuple[Result | None, list[Result]]:
        """A wave of one attempt."""
        r = await self._attempt(call, attempt)
        if _wins(r, call):
            return r, []
        self._account(r)
        return None, [r]

    async def _race(
        self, call: Call, plan: AttemptPlan, primary: Attempt, delay_s: float
    ) -> tuple[Result | None, list[Result]]:
        """The primary, plus a hedge to the backup region if no first byte within ``delay_s`` (budget
        permitting). The first attempt with a first byte wins; the other is cancelled at once."""
        running = {asyncio.create_task(self._attempt(call, primary)): primary}
        done, _ = await asyncio.wait(set(running), timeout=delay_s)
        if not done:
            target = plan.hedge()
            if target is not None and self.hedging.budget.try_spend():
                call.hedged = True
                self.metrics.hedges.labels(outcome="sent", region=target.region).inc()
                task = asyncio.create_task(self._attempt(call, target))
                running[task] = target
        won, failed, pending = None, [], set(running)
        try:
            while pending and won is None:
                left = max(0.001, call.deadline - time.monotonic())
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED, timeout=left)
                if not done:
                    break
                for task in done:
                    r = task.result()
                    if won is None and _wins(r, call):
                        won = r
                    else:
                        self._account(r)
                        failed.append(r)
        finally:
            await self._cancel_losers(pending)
        if won is not None:
            won.span.set_attribute(tracing.ATTR_WINNER, True)
            if won.attempt.kind == "hedge":
                self.metrics.hedges.labels(outcome="won", region=won.attempt.region).inc()
                if any(running[t] is primary for t in pending):  # cancelled before a token: less waste
                    self.hedging.budget.won()
        return won, failed

    async def _cancel_losers(self, pending: set[asyncio.Task[Result]]) -> None:
        """Cancel the race's losers now: their connections close, so their regions stop generating."""
        for task in pending:
            task.cancel()
        for r in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(r, Result):  # finished while being cancelled: it lost all the same
                self._account(r)
                self._drop(r)

    def _begin(self, call: Call, attempt: Attempt) -> trace.Span:
        """An attempt leaves: its span, its place in the outstanding counts, a half-open breaker's probe."""
        call.sent += 1
        self.observed.start(attempt.region, attempt.replica)
        self.res.outliers.sent(attempt.region, attempt.replica, time.monotonic())
        return self._attempt_span(call, attempt)

    async def _attempt(self, call: Call, attempt: Attempt) -> Result:
        """Send one attempt with its span's traceparent; returns at the response headers (for a stream, at
        its first event, within the first-token limit) with the outcome classified. Cancelled: the
        connection is closed."""
        span = self._begin(call, attempt)
        t0 = time.monotonic()
        request = call.request
        if isinstance(request, EdgeRequest) and request.sent_at is None:
            request.sent_at = t0  # Server-Timing: the edge's own time ends here
        upstream: UpstreamResponse | None = None
        first, retry_after, body = None, 0.0, None
        try:
            upstream = await self._open(call, attempt, span, call.request.method, call.body)
            outcome = answered(upstream.status)
            if (
                upstream.status == 400
                and (upstream.content_length or ERROR_BODY_LIMIT + 1) <= ERROR_BODY_LIMIT
            ):
                async with asyncio.timeout(max(0.001, call.deadline - time.monotonic())):
                    body = await upstream.read()
                if context_exceeded(body):
                    outcome = CONTEXT
            if outcome.kind == "throttled":
                retry_after = retry_after_s(upstream.headers.get("Retry-After"))
            if outcome.kind == "ok" and upstream.content_type == "text/event-stream":
                # a streaming server sends its headers at once: the attempt stands or falls on its first event
                left = min(call.timeouts.first_token_s, call.deadline - t0) - (time.monotonic() - t0)
                try:  # the first-token limit, not the idle one, holds until the first event
                    first = await upstream.readany(within_s=max(0.001, left))
                except TimeoutError:
                    outcome = FIRST_TOKEN
                    upstream.close()
                    upstream = None
        except asyncio.CancelledError:
            if upstream is not None:
                upstream.close()
            self._end(attempt, span, None, cancelled=True)
            raise
        except Exception as exc:
            outcome = raised(exc)
            if outcome.kind == "error":
                log.exception("attempt to %s/%s failed in the edge", attempt.region, attempt.replica)
            if upstream is not None:
                upstream.close()
                upstream = None
        return Result(attempt, span, outcome, time.monotonic() - t0, upstream, t0, first, retry_after, body)

    def _open(
        self, call: Call, attempt: Attempt, span: trace.Span, method: str, body: bytes
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        """Send one request of ``call`` to ``attempt``'s replica (its span's traceparent, the call's timeouts,
        the time to first byte bounded by the deadline); awaited, it returns at the response headers (the
        pool's own coroutine: no coroutine of its own in between, on every request)."""
        t = call.timeouts
        return self.pool.request(
            attempt.url,
            method,
            call.path_qs,
            tracing.trace_headers(span),
            body,
            header_block=call.headers,
            connect_s=t.connect_s,
            idle_s=t.idle_s,
            ttfb_s=max(0.001, min(t.ttfb_s, call.deadline - time.monotonic())),
        )

    def _account(self, r: Result, *, judge: bool = True) -> None:
        """One attempt's outcome into the metrics, the hedge windows, the breakers and the observations: the
        same for every kind of attempt. The committed attempt is judged (breakers, observations) when its
        answer ends (``judge`` False here): a stream the region breaks off is a failure, not a success."""
        attempt, span, outcome = r.attempt, r.span, r.outcome
        if outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
            self.metrics.counts.first_byte(attempt.region, r.ttfb)
            if outcome.kind == "ok":
                self.hedging.observe(attempt.region, r.ttfb)
        if judge:
            self._judge(r)
        self.metrics.counts.attempt(attempt.region, attempt.kind, outcome.label)
        span.set_attribute(tracing.ATTR_OUTCOME, outcome.label)
        if outcome.breaker_failure or outcome.kind == "error":
            span.set_status(Status(StatusCode.ERROR, outcome.detail))

    def _judge(self, r: Result) -> None:
        """The attempt's outcome into its replica's and region's breakers and this edge's observations; a
        throttled replica is left alone for its Retry-After (or a second): no tight loop on a refusing one."""
        outcome = r.outcome
        if outcome.kind == "throttled":
            until = time.monotonic() + (r.retry_after_s or THROTTLE_HOLD_S)
            self.res.outliers.hold(r.attempt.region, r.attempt.replica, until)
        if outcome.kind != "error":  # a bug of ours says nothing about the region
            self._record(r.attempt, not outcome.breaker_failure)
        self.observed.record(r.attempt.region, error=outcome.breaker_failure)

    def _record(self, attempt: Attempt, ok: bool) -> None:
        count = self.res.replica_counts.get(attempt.region, 1)
        ejected = self.res.outliers.record(
            attempt.region, attempt.replica, ok, now=time.monotonic(), replica_count=count
        )
        for level in ejected:
            self.metrics.ejections.labels(level=level, region=attempt.region).inc()
            log.warning("ejected %s %s/%s after passive failures", level, attempt.region, attempt.replica)

    def _end(
        self,
        attempt: Attempt,
        span: trace.Span,
        upstream: UpstreamResponse | None,
        *,
        cancelled: bool = False,
    ) -> None:
        if upstream is not None:
            upstream.release()
        self.observed.finish(attempt.region, attempt.replica)
        if cancelled:
            span.set_attribute(tracing.ATTR_CANCELLED, True)
            span.set_attribute(tracing.ATTR_WINNER, False)
            self.metrics.hedges.labels(outcome="cancelled", region=attempt.region).inc()
        span.end()

    def _drop(self, r: Result) -> None:
        """A failed attempt that will not answer the client: close its response, end its span."""
        if r.upstream is not None:
            r.upstream.close()
            r.upstream = None
        self._end(r.attempt, r.span, None)

    async def _commit(self, call: Call, r: Result) -> Forwarded:
        """Committed: the client's first byte goes first, this attempt's bookkeeping right after it (next loop
        turn, or when the relay ends, whichever is sooner: at once for an answer whose body is all in, as its
        relay waits for nothing)."""
        book = _Once(self._committed, r)
        request = call.request
        if isinstance(request, EdgeRequest):
            request.upstream_s = r.ttfb  # Server-Timing: the answering upstream's time to first byte
            request.served = (r.attempt.region, r.attempt.replica)
            self.observed.served(r.attempt.region, request.continent)
            request.streaming = r.upstream is not None and r.upstream.content_type == "text/event-stream"
        if r.upstream is not None and not r.upstream.complete:
            request.task.get_loop().call_soon(book)
        try:
            resp = await self._relay(call, r)
        finally:
            book()
            self._judge(r)  # the answer ended: whole, or broken off (a cut outcome)
            self._end(r.attempt, r.span, r.upstream)
        return Forwarded(resp, r.attempt.region, r.outcome.failed and not r.continued)

    def _committed(self, r: Result) -> None:
        self._account(r, judge=False)
        self.metrics.counts.request(r.attempt.region, r.outcome.label)
        r.span.set_attribute("meridian.committed", True)

    async def _give_up(self, call: Call, last: Result | None) -> Forwarded:
        """No attempt committed: the last region's own answer when it gave one (a 503 that could not be
        retried), else an error in OpenAI's shape with the status the last outcome calls for."""
        if last is not None and last.upstream is not None:
            self.metrics.counts.request(last.attempt.region, last.outcome.label)
            last.span.set_attribute("meridian.committed", True)
            try:
                resp = await self._relay(call, last)
            finally:
                self._end(last.attempt, last.span, last.upstream)
            return Forwarded(resp, last.attempt.region, last.outcome.failed)
        if last is not None:
            self._drop(last)
            outcome = last.outcome
        else:  # nothing answered: the deadline ran out in a race, or no region had a replica to try
            outcome = TIMEOUT if call.sent else NO_REPLICA
        status, detail = outcome.client_status, outcome.detail
        self.metrics.counts.request("none", str(status))
        message = f"no upstream could take the request: {detail}"
        answer = error(status, message, kind="meridian_upstream", headers=self._meridian_headers(call, None))
        return Forwarded(answer, None, True)

    def _meridian_headers(self, call: Call, attempt: Attempt | None) -> dict[str, str]:
        h = {"X-Meridian-Edge": self.edge_region, "X-Meridian-Attempts": str(call.sent)}
        if attempt is not None:
            h["X-Meridian-Region"] = attempt.region
            if self.replica_header:
                h["X-Meridian-Replica"] = attempt.replica
            if call.hedged:
                h["X-Meridian-Hedged"] = "1"
        if call.model is not None:
            h["X-Meridian-Model"] = call.model
        if call.extra:
            h.update(call.extra)
        return h

    def _attempt_span(self, call: Call, attempt: Attempt) -> trace.Span:
        """One client span per attempt, child of the request's span. An unsampled request records nothing:
        its own (non-recording) span stands in, so the region still gets the request's trace id."""
        parent = call.parent
        if not parent.is_recording():
            return parent
        return self.tracer.start_span(
            tracing.SPAN_ATTEMPT,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                tracing.ATTR_REGION: attempt.region,
                tracing.ATTR_REPLICA: attempt.replica,
                tracing.ATTR_ATTEMPT: call.sent,
                tracing.ATTR_ATTEMPT_KIND: attempt.kind,
                tracing.ATTR_WHY: attempt.why,
                "http.request.method": call.request.method,
                "url.full": attempt.url + call.path_qs,
            },
        )

    async def _relay(self, call: Call, r: Result) -> web.StreamResponse:
        """Committed: copy status and headers, then the body (buffered when small, else chunk by chunk)."""
        upstream, attempt = r.upstream, r.attempt
        assert upstream is not None
        meridian = self._meridian_headers(call, attempt)
        length = upstream.content_length
        streaming = upstream.content_type == "text/event-stream" or length is None or length > BUFFER_LIMIT
        if not streaming and r.first is None:
            return await self._small(call, r, meridian)
        resp, request = await self._prepared(call, r, upstream, meridian), call.request
        events = upstream.content_type == "text/event-stream"
        timed = events and r.outcome.kind == "ok"
        tally = call.tally if events else None
        frames = EventFrames() if events else None  # whole, well-formed events only
        sent = Sent() if events and call.path_qs.startswith(CHAT) else None
        relay = Relay(frames, deadline=call.deadline, tally=tally, sent=sent, standing=call.standing)
        pumping, first, read, end = False, r.first, upstream.readany, b""
        try:
            while True:
                if pumping:  # the rest of an event stream, written from the connection's callback
                    tail = await upstream.pump(relay)
                    if tail is not None:  # what came with the stream's end goes out with it
                        end = relay.frame(tail)
                        break
                    if not (relay.overdue or relay.revoked):
                        await request.writer.drain()  # a slow client: the region's events wait meanwhile
                else:
                    piece, first = first or await read(), None  # no async generator between pool and relay
                    if not piece:
                        break
                    chunk = relay.frame(piece)
                    if not chunk:
                        continue
                    if timed:  # the stream's first event: the region's time to first token, seen from here
                        at = r.ttfb if piece is r.first else time.monotonic() - r.started
                        self.observed.first_token(attempt.region, at * 1000.0)
                        timed = False
                    await resp.write(chunk)  # aiohttp's write: the first one carries the headers held for it
                    relay.wrote(chunk)
                    pumping = relay.direct(request)
                if relay.overdue:
                    raise TimeoutError("total timeout")
                if relay.revoked:
                    return await self._revoked(r, resp)
            if frames is not None and not frames.done and call.path_qs.startswith(OPENAI_STREAMS):
                end += self._unfinished(frames)
            await resp.write_eof(end)  # the last events, the [DONE] and the stream's end: one write
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            if request.transport is None or request.transport.is_closing():
                return self._client_left(r, resp)
            return await self._broke_off(call, r, exc, resp, sent)
        except STREAM_ERRORS as exc:
            return await self._broke_off(call, r, exc, resp, sent)
        finally:
            self._framed(frames, attempt)
        return resp

    def _client_left(self, r: Result, resp: web.StreamResponse) -> web.StreamResponse:
        """The client went away mid-stream: counted, and the region stops generating tokens nobody reads."""
        assert r.upstream is not None
        self.metrics.stream_aborts.labels(region=r.attempt.region, side="client").inc()
        r.span.set_attribute(tracing.ATTR_OUTCOME, "client went away")
        r.upstream.close()
        return resp

    async def _prepared(
        self, call: Call, r: Result, upstream: UpstreamResponse, meridian: dict[str, str]
    ) -> web.StreamResponse:
        """The client's response, status and headers sent: with the first chunk when it is already here
        (one write), else at once."""
        kind = CoalescingStreamResponse if r.first or upstream.buffered else web.StreamResponse
        resp = kind(status=upstream.status)
        copy_response_headers(upstream.headers, resp.headers)
        resp.headers.update(meridian)
        await resp.prepare(call.request)
        return resp

    @staticmethod
    def _unfinished(frames: EventFrames) -> bytes:
        """A chat or completion stream ended without ``[DONE]``: if its answer was whole (a finish reason
        went by) the ``[DONE]`` the client expects, to write; else it was cut short (``ShortStream``)."""
        if frames.passing:
            return b""
        if not frames.finished():
            raise ShortStream("the stream ended before its answer did")
        return DONE

    def _framed(self, frames: EventFrames | None, attempt: Attempt) -> None:
        """A stream ended: a partial event still held is dropped; what was dropped is counted."""
        if frames is not None:
            frames.end()
            if frames.dropped:
                self.metrics.child(self.metrics.malformed_events, attempt.region).inc(frames.dropped)

    async def _small(self, call: Call, r: Result, meridian: dict[str, str]) -> web.StreamResponse:
        """A small, sized body: read whole, sent with Content-Length."""
        upstream = r.upstream
        assert upstream is not None
        try:
            if r.body is not None:  # read already (a 400, to tell a context error)
                data = r.body
            elif upstream.complete:  # the whole body came with the headers: nothing to wait for
                data = await upstream.read()
            else:
                async with asyncio.timeout(max(0.001, call.deadline - time.monotonic())):
                    data = await upstream.read()
        except STREAM_ERRORS as exc:
            self.metrics.stream_aborts.labels(region=r.attempt.region, side="upstream").inc()
            r.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            r.outcome = cut(type(exc).__name__)
            message = f"upstream {r.attempt.region} broke off its response"
            return error(502, message, kind="meridian_upstream", headers=meridian)
        if call.tally is not None:
            call.tally.body(data)
        small = web.Response(body=data, status=upstream.status)
        copy_response_headers(upstream.headers, small.headers)
        small.headers.update(meridian)
        return small

    async def _revoked(self, r: Result, resp: web.StreamResponse) -> web.StreamResponse:
        """The key was revoked while its answer streamed: an error event in OpenAI's shape, then the end."""
        r.span.set_attribute(tracing.ATTR_OUTCOME, "key revoked")
        if r.upstream is not None:
            r.upstream.close()  # stop the region generating tokens nobody may have
        await resp.write(REVOKED_EVENT)
        await resp.write_eof()
        return resp

    async def _broke_off(
        self, call: Call, r: Result, exc: BaseException, resp: web.StreamResponse, sent: Sent | None
    ) -> web.StreamResponse:
        """The upstream failed after the client got bytes: no retry. A chat stream goes on on another
        replica that can continue it (``_continue``); else the client gets an error event in OpenAI's
        stream shape and a clean end — never a bare reset, never a truncation passed off as complete."""
        self.metrics.stream_aborts.labels(region=r.attempt.region, side="upstream").inc()
        r.outcome = cut(type(exc).__name__)
        r.span.set_status(Status(StatusCode.ERROR, r.outcome.detail))
        if r.upstream is not None:
            r.upstream.close()
        try:
            transport = call.request.transport
            gone = transport is None or transport.is_closing()  # nobody to go on for
            if (
                not gone
                and sent is not None
                and sent.chunks
                and await self._continue(call, r, resp, sent.chunks)
            ):
                r.continued = True  # the cut still counts against its replica; the answer is served
                return resp
            message = f"upstream {r.attempt.region} broke off the stream ({r.outcome.detail})"
            event = {
                "error": {
                    "message": message,
                    "type": "meridian_upstream",
                    "param": None,
                    "code": "stream_cut",
                }
            }
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client left too
        return resp

    async def _continue(self, call: Call, r: Result, resp: web.StreamResponse, sent: list[bytes]) -> bool:
        """Go on from what the client has, on the plan's next replica whose engine takes
        ``continue_final_message`` (one that fails before its first byte passes it to the next, within the
        plan's attempts); its events stitched into this stream. False: the stream could not be finished."""
        plan = call.plan
        if plan is None:
            return False
        plan.failed(r.attempt, "cut")
        partial, count, stream_id = partial_of(sent)
        body = continuation_body(call.body, partial, count)
        if body is None or not stream_id:
            return False
        while time.monotonic() < call.deadline:
            nxt = plan.next()
            if nxt is None or not self.continuable.at(nxt.region, nxt.replica, call.model):
                return False
            went_on = await self._go_on(call, nxt, body, Stitch(stream_id, count), resp)
            if isinstance(went_on, bool):
                return went_on
            plan.failed(nxt, went_on.kind)
        return False

    async def _go_on(
        self, call: Call, nxt: Attempt, body: bytes, stitch: Stitch, resp: web.StreamResponse
    ) -> bool | Outcome:
        """One continuation: True, the stream went on to its end; False, it stopped (the engine refused the
        prefix — the client hears of the original fault —, or it broke off after writing); an outcome, it
        failed before its first byte (its replica's breaker told; the plan's next may try)."""
        span = self._begin(call, nxt)
        upstream: UpstreamResponse | None = None
        written = False
        try:
            upstream = await self._open(call, nxt, span, "POST", body)
            if upstream.status != 200 or upstream.content_type != "text/event-stream":
                upstream.close()
                upstream = None
                return False
            frames = EventFrames()
            async for piece in upstream:
                chunk = stitch.rewrite(frames.feed(piece))
                if chunk:
                    if call.tally is not None:
                        call.tally.chunk(chunk)
                    written = True
                    await resp.write(chunk)
            await resp.write_eof()
            self._record(nxt, True)
            self.metrics.counts.attempt(nxt.region, "continuation", "200")
            return True
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            if upstream is not None:
                upstream.close()
                upstream = None
            if written:
                return False
            outcome = raised(exc)
            self._record(nxt, False)
            self.metrics.counts.attempt(nxt.region, "continuation", outcome.label)
            return outcome
        finally:
            self._end(nxt, span, upstream)
