"""Tracing: the set-up (I/O at start-up only: the TracerProvider and exporter chosen by settings), the W3C
propagator, the span and attribute names every edge uses, and each request's span (sampled here, or as a
trusted peer decided)."""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Sequence

from aiohttp import web
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from edge.peers import IPNetwork, trusted_peer

PROPAGATOR = TraceContextTextMapPropagator()

SPAN_SERVER = "meridian.edge.request"
SPAN_ATTEMPT = "meridian.edge.attempt"

ATTR_REGION = "meridian.region"
ATTR_REPLICA = "meridian.replica"
ATTR_EDGE = "meridian.edge"
ATTR_ATTEMPT = "meridian.attempt"
ATTR_ATTEMPT_KIND = "meridian.attempt.kind"
ATTR_BACKUP = "meridian.backup_region"
ATTR_CLIENT_COUNTRY = "meridian.client.country"
ATTR_OUTCOME = "meridian.attempt.outcome"
ATTR_PRIORITY = "meridian.priority"
ATTR_TENANT = "meridian.tenant"  # the tenant's id; its key never goes into a span
ATTR_WHY = "meridian.attempt.why"
ATTR_WINNER = "meridian.attempt.winner"
ATTR_CANCELLED = "meridian.attempt.cancelled"
ATTR_RETRIES = "meridian.retries"
ATTR_RETRY_DENIED = "meridian.retry_denied"


class TracingConfigError(RuntimeError):
    pass


class HeadSampler:
    """Head sampling for requests that arrive without a trace context, decided before the SDK is involved:
    a request left out gets a non-recording span with fresh ids (its context still goes upstream, flagged
    not sampled) for one random draw, instead of the SDK's start_span (~8 µs of a ~200 µs request). The
    provider's sampler is ParentBased(ALWAYS_ON): requests chosen here, and requests whose traceparent says
    sampled, are recorded; a traceparent that says not sampled is followed too."""

    def __init__(self, ratio: float, rng: random.Random) -> None:
        self.ratio = ratio
        self.rng = rng

    def left_out(self) -> Span | None:
        """A stand-in span for a request not sampled, or None: start a real one."""
        if self.ratio >= 1.0 or self.rng.random() < self.ratio:
            return None
        bits = self.rng.getrandbits
        return LeftOut(bits(128) or 1, bits(64) or 1)


UNSAMPLED = TraceFlags(0)


class LeftOut(NonRecordingSpan):
    """An unsampled request's stand-in span, its ids written out once: the request id (its trace id) and
    the traceparent every attempt sends upstream. Its ``SpanContext`` is made only when asked for (a
    child span, a propagator): most requests never ask, and making one costs more than the rest."""

    def __init__(self, trace_id: int, span_id: int) -> None:  # the base's context: lazily, below
        self.ids = (trace_id, span_id)
        self.trace_hex = f"{trace_id:032x}"
        self.headers = (("traceparent", f"00-{self.trace_hex}-{span_id:016x}-00"),)
        self.context: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        if self.context is None:
            trace_id, span_id = self.ids
            self.context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=UNSAMPLED)
        return self.context

    def __repr__(self) -> str:
        return f"LeftOut(trace_id={self.trace_hex})"


def trace_hex(span: Span) -> str:
    """``span``'s trace id as 32 hex digits (a request's id)."""
    if type(span) is LeftOut:
        return span.trace_hex
    return f"{span.get_span_context().trace_id:032x}"


class RequestSpans:
    """Each request's server span: sampled by ``sampler``, or following the decision of a peer in
    ``trusted`` (another edge, a gateway of ours); a client's own trace context is linked, never obeyed."""

    def __init__(self, tracer: Tracer, sampler: HeadSampler, trusted: Sequence[IPNetwork], edge: str) -> None:
        self.tracer, self.sampler, self.trusted, self.edge = tracer, sampler, tuple(trusted), edge

    def start(self, request: web.BaseRequest) -> Span:
        headers = request.headers
        if "traceparent" not in headers:
            return self.sampler.left_out() or self._server_span(request, None)
        if trusted_peer(request.remote, self.trusted):  # a peer of ours: its sampling decision is followed
            return self._server_span(request, PROPAGATOR.extract(headers))
        client = get_current_span(PROPAGATOR.extract(headers)).get_span_context()
        links = [Link(client)] if client.is_valid else None
        return self.sampler.left_out() or self._server_span(request, None, links=links)

    def _server_span(
        self, request: web.BaseRequest, parent: Context | None, *, links: list[Link] | None = None
    ) -> Span:
        return self.tracer.start_span(
            SPAN_SERVER,
            context=parent,
            links=links,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                ATTR_EDGE: self.edge,
            },
        )


def make_tracer_provider(*, service_name: str, region: str, exporter: str) -> TracerProvider:
    """Roots reaching the SDK were chosen by HeadSampler; children follow their parent's flag."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "cloud.region": region}),
        sampler=ParentBased(ALWAYS_ON),
    )
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter(out=sys.stderr)
    elif exporter == "otlp":
        try:
            mod = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        except ImportError:
            raise TracingConfigError(
                "MERIDIAN_TRACING_EXPORTER=otlp needs the opentelemetry-exporter-otlp-proto-http package"
            ) from None
        span_exporter = mod.OTLPSpanExporter()
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def trace_headers(span: Span) -> Sequence[tuple[str, str]]:
    """W3C headers carrying ``span``'s context upstream; formatted directly when there is no tracestate
    (what the propagator would write, for a fraction of its cost on every request)."""
    if type(span) is LeftOut:
        return span.headers
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return []
    if ctx.trace_state:
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=set_span_in_context(span))
        return list(carrier.items())
    return [("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}")]
