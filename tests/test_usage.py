"""Token usage (pure): what an answer used, from its ``usage`` or its streamed events, and the ledger of
usage rows per tenant, model, region and hour, as the store holds them."""

from __future__ import annotations

import json

from edge.telemetry.usage import Ledger, Tally
from fleet.usage import UsageRow, decode_hour, merge_edges, plausible, usage_field


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def test_a_buffered_answer_reports_its_usage() -> None:
    t = Tally()
    t.body(json.dumps({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30}}).encode())
    assert t.exact and t.tokens(prompt_estimate=99) == (12, 30)


def test_a_body_without_usage_pays_the_prompt_estimate() -> None:
    t = Tally()
    t.body(b'{"error": {"message": "boom"}}')
    assert not t.exact and t.tokens(prompt_estimate=7) == (7, 0)


def test_a_stream_is_counted_as_it_flows_and_its_usage_chunk_wins() -> None:
    t = Tally()
    chunks = [event({"choices": [{"delta": {"content": "x"}}]}) for _ in range(5)]
    for c in chunks:
        t.chunk(c)
    assert t.events == 5 and t.tokens(prompt_estimate=3) == (3, 5)  # counted while it flows
    t.chunk(event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}}))
    t.chunk(b"data: [DONE]\n\n")
    assert t.exact and t.tokens(prompt_estimate=3) == (4, 5)


def test_events_split_across_reads_are_counted_once() -> None:
    t = Tally()
    stream = b"".join(event({"choices": [{"delta": {"content": "y"}}]}) for _ in range(4))
    for i in range(0, len(stream), 7):  # reads that cut events anywhere
        t.chunk(stream[i : i + 7])
    assert t.events <= 4  # an event cut inside its marker is missed, never counted twice


def test_the_ledger_keeps_rows_per_tenant_model_region_and_hour_and_takes_back_a_failed_batch() -> None:
    ledger = Ledger()
    for unix_s in (3600.0, 3601.0, 7200.0):
        ledger.add(tenant="t", model="m", region="r", unix_s=unix_s, prompt=10, completion=5, error=False)
    ledger.add(tenant="t", model="m", region="r", unix_s=3602.0, prompt=1, completion=0, error=True)
    batch = ledger.drain()
    assert batch[("t", "m", "r", 1)] == UsageRow(requests=3, prompt_tokens=21, completion_tokens=10, errors=1)
    assert batch[("t", "m", "r", 2)] == UsageRow(requests=1, prompt_tokens=10, completion_tokens=5)
    ledger.add(tenant="t", model="m", region="r", unix_s=3603.0, prompt=2, completion=2, error=False)
    ledger.restore(batch)
    assert ledger.rows[("t", "m", "r", 1)].requests == 4


def test_a_stored_hour_decodes_even_when_the_model_name_holds_the_separator() -> None:
    raw: dict[str | bytes, str | bytes] = {
        usage_field("us-east-1", "requests", "org|model:v2"): "3",
        "junk": "1",
        "r|bogus|m": "2",
    }
    assert decode_hour(raw) == {("org|model:v2", "us-east-1"): UsageRow(requests=3)}


def test_rows_no_edge_could_count_are_left_out_and_named() -> None:
    """An edge's user may add to its own usage hashes: what it adds is summed with the other edges' unless
    no edge could have counted it (a trillion tokens for one request, errors beyond requests, spend beyond
    $1,000 per million tokens), which is left out and its edge named."""
    honest = UsageRow(requests=2, prompt_tokens=300, completion_tokens=40, errors=1, spend_nusd=50_000)
    assert plausible(honest)
    for forged in (
        UsageRow(requests=1, prompt_tokens=10**12),
        UsageRow(requests=1, errors=2),
        UsageRow(requests=1, prompt_tokens=10, spend_nusd=10**12),
        UsageRow(requests=10**9),
    ):
        assert not plausible(forged), forged
    at = ("m", "eu-west-1")
    total, forged_by = merge_edges(
        {
            "eu-west-1": {at: honest},
            "us-east-1": {at: honest},
            "mallory": {at: UsageRow(requests=1, errors=9)},
        }
    )
    assert total[at].requests == 4 and total[at].prompt_tokens == 600
    assert forged_by == ["mallory"]
