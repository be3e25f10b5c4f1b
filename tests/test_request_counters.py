"""The edge's per-request counts (requests, attempts, time to first byte) kept in plain dicts render as the
Prometheus client library's own Counter and Histogram would, bucket bounds included."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from edge.telemetry.metrics import TTFB_BUCKETS, RequestCounters

# on a bound, between bounds, past the last one, zero
SECONDS = [0.005, 0.0051, 0.3, 1.0, 29.9, 30.0, 31.0, 0.0, 0.025, 0.0249]


def _lines(registry: CollectorRegistry) -> set[str]:
    return {line for line in generate_latest(registry).decode().splitlines() if "_created" not in line}


def test_counts_render_as_the_client_librarys_counters_and_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counts = RequestCounters()
    ours.register(counts)
    requests = Counter(
        "meridian_edge_requests",
        "Client requests by serving region and status",
        ["region", "code"],
        registry=theirs,
    )
    attempts = Counter(
        "meridian_edge_upstream_attempts",
        "Upstream attempts by region and outcome",
        ["region", "kind", "outcome"],
        registry=theirs,
    )
    ttfb = Histogram(
        "meridian_edge_upstream_ttfb_seconds",
        "Time to upstream response headers",
        ["region"],
        buckets=TTFB_BUCKETS,
        registry=theirs,
    )
    for i, s in enumerate(SECONDS):
        region = ("eu-west-1", "us-east-1")[i % 2]
        counts.first_byte(region, s)
        ttfb.labels(region).observe(s)
        counts.attempt(region, "primary", "200" if i % 3 else "503")
        attempts.labels(region, "primary", "200" if i % 3 else "503").inc()
        counts.request(region, "200")
        requests.labels(region, "200").inc()
    counts.request("none", "502")
    requests.labels("none", "502").inc()
    assert _lines(ours) == _lines(theirs)
    lines = _lines(ours)
    assert 'meridian_edge_upstream_ttfb_seconds_bucket{le="0.005",region="eu-west-1"} 1.0' in lines  # on it
    assert 'meridian_edge_upstream_ttfb_seconds_bucket{le="30.0",region="us-east-1"} 5.0' in lines
    assert 'meridian_edge_upstream_ttfb_seconds_bucket{le="30.0",region="eu-west-1"} 4.0' in lines  # 31 s
