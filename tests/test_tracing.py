"""Head sampling: which requests without a trace context get recorded spans."""

from __future__ import annotations

import random

from edge.telemetry.tracing import HeadSampler, trace_hex


def test_head_sampler_keeps_its_ratio_and_left_out_requests_still_carry_a_context() -> None:
    sampler = HeadSampler(0.25, random.Random(5))
    outcomes = [sampler.left_out() for _ in range(8000)]
    kept = sum(1 for o in outcomes if o is None)
    assert 1800 <= kept <= 2200  # 25 % of 8000, within ~5 sigma
    stand_ins = [o for o in outcomes if o is not None]
    assert not any(s.is_recording() for s in stand_ins)
    ctx = stand_ins[0].get_span_context()  # made when asked for, from the ids written out at once
    assert ctx.is_valid and not ctx.trace_flags.sampled
    assert trace_hex(stand_ins[0]) == f"{ctx.trace_id:032x}" and stand_ins[0].get_span_context() is ctx
    assert len({s.get_span_context().trace_id for s in stand_ins}) == len(stand_ins)


def test_head_sampler_at_one_records_everything_and_at_zero_nothing() -> None:
    assert all(HeadSampler(1.0, random.Random(1)).left_out() is None for _ in range(1000))
    assert all(HeadSampler(0.0, random.Random(1)).left_out() is not None for _ in range(1000))


def test_trace_headers_are_what_the_w3c_propagator_writes() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from edge.telemetry.tracing import PROPAGATOR, trace_headers

    recorded = TracerProvider().get_tracer("t").start_span("s")
    stand_in = HeadSampler(0.0, random.Random(2)).left_out()
    with_state = NonRecordingSpan(
        SpanContext(
            trace_id=7,
            span_id=9,
            is_remote=True,
            trace_flags=TraceFlags(1),
            trace_state=TraceState([("k", "v")]),
        )
    )
    for span in (recorded, stand_in, with_state):
        assert span is not None
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        assert dict(trace_headers(span)) == carrier
    assert trace_headers(trace.INVALID_SPAN) == []
