"""Tracing set-up (I/O at start-up only): the TracerProvider and exporter chosen by settings, the W3C
propagator, and the span and attribute names every edge uses."""

from __future__ import annotations

import importlib
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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


class TracingConfigError(RuntimeError):
    pass


def make_tracer_provider(
    *, service_name: str, region: str, exporter: str, sample_ratio: float
) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "cloud.region": region}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
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
