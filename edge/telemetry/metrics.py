"""Prometheus metrics of one edge process (in-memory registry, rendered by /metrics)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

go_float = cast(Callable[[float], str], floatToGoString)  # how the client library writes a bucket's bound

M = TypeVar("M", bound=MetricWrapperBase)

MAX_TENANT_LABELS = 100  # tenants with their own label; the rest are counted under "other"
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Family(NamedTuple):
    """One metric a collector of ours exports (its name without ``_total``): what the reference page lists."""

    name: str
    kind: Literal["counter", "histogram"]
    labels: tuple[str, ...]
    help: str


def _counter(family: Family, counts: dict[Any, int], shown: Callable[[int], float] = float) -> Metric:
    metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    for labels, n in list(counts.items()):
        metric.add_metric(labels, shown(n))
    return metric


class RequestCounters(Collector):
    """Requests, attempts and the regions' time to first byte, each request's three counts: plain dict counts
    on the request path (no lock, no child lookup), turned into Prometheus families when scraped."""

    FAMILIES = (
        Family(
            "meridian_edge_requests",
            "counter",
            ("region", "code"),
            "Client requests by serving region and status",
        ),
        Family(
            "meridian_edge_upstream_attempts",
            "counter",
            ("region", "kind", "outcome"),
            "Upstream attempts by region and outcome",
        ),
        Family(
            "meridian_edge_upstream_ttfb_seconds",
            "histogram",
            ("region",),
            "Time to upstream response headers",
        ),
    )

    def __init__(self, buckets: tuple[float, ...] = TTFB_BUCKETS) -> None:
        self.buckets = buckets
        self.requests: dict[tuple[str, str], int] = {}  # (region, code)
        self.attempts: dict[tuple[str, str, str], int] = {}  # (region, kind, outcome)
        self.ttfb: dict[str, list[float]] = {}  # region -> a count per bucket (+Inf last), then the sum

    def request(self, region: str, code: str) -> None:
        key = (region, code)
        self.requests[key] = self.requests.get(key, 0) + 1

    def attempt(self, region: str, kind: str, outcome: str) -> None:
        key = (region, kind, outcome)
        self.attempts[key] = self.attempts.get(key, 0) + 1

    def first_byte(self, region: str, seconds: float) -> None:
        row = self.ttfb.get(region)
        if row is None:
            row = self.ttfb[region] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, seconds)] += 1  # the first bucket whose bound is >= it
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests, attempts, first_byte = self.FAMILIES
        yield _counter(requests, self.requests)
        yield _counter(attempts, self.attempts)
        ttfb = HistogramMetricFamily(first_byte.name, first_byte.help, labels=first_byte.labels)
        bounds = [go_float(b) for b in (*self.buckets, math.inf)]
        for region, row in list(self.ttfb.items()):
            cumulative, buckets = 0.0, list[tuple[str, float]]()
            for bound, count in zip(bounds, row, strict=False):  # the last of row is the sum
                cumulative += count
                buckets.append((bound, cumulative))
            ttfb.add_metric([region], buckets, sum_value=row[-1])
        yield ttfb


class TenantCounters(Collector):
    """Per-tenant requests by outcome and tokens by kind: plain dict counts on the request path (no lock, no
    label lookup), turned into Prometheus counters at scrape time. The first ``MAX_TENANT_LABELS`` tenants
    have their own label, the rest are counted under "other" (bounded cardinality)."""

    FAMILIES = (
        Family(
            "meridian_edge_tenant_requests",
            "counter",
            ("tenant", "outcome"),
            f"Requests per tenant by outcome (ok, error, rate_limited, shed); {MAX_TENANT_LABELS} tenants at "
            "most have their own label, the rest are 'other'",
        ),
        Family(
            "meridian_edge_tenant_tokens",
            "counter",
            ("tenant", "kind"),
            "Tokens per tenant (prompt, completion), as the answers reported or the streams counted",
        ),
        Family(
            "meridian_edge_tenant_spend_usd",
            "counter",
            ("tenant", "model"),
            "What each tenant's answers cost at the catalog's prices, per model (the models of the catalog)",
        ),
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.spend: dict[tuple[str, str], int] = {}  # (tenant, model) -> nano-dollars
        self._labels: set[str] = set()

    def label(self, tenant: str) -> str:
        labels = self._labels
        if tenant in labels:
            return tenant
        if len(labels) < MAX_TENANT_LABELS:
            labels.add(tenant)
            return tenant
        return "other"

    def outcome(self, tenant: str, outcome: str) -> None:
        key = (self.label(tenant), outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    def answered(
        self, tenant: str, failed: bool, prompt: int, completion: int, model: str = "-", spend_nusd: int = 0
    ) -> None:
        label = self.label(tenant)
        self.outcome(label, "error" if failed else "ok")
        tokens = self.tokens
        tokens[(label, "prompt")] = tokens.get((label, "prompt"), 0) + prompt
        tokens[(label, "completion")] = tokens.get((label, "completion"), 0) + completion
        if spend_nusd:
            self.spend[(label, model)] = self.spend.get((label, model), 0) + spend_nusd

    def collect(self) -> Iterator[Metric]:
        requests, tokens, spend = self.FAMILIES
        yield _counter(requests, self.requests)
        yield _counter(tokens, self.tokens)
        yield _counter(spend, self.spend, lambda nusd: nusd / 1e9)


class EdgeMetrics:
    def __init__(
        self,
        *,
        snapshot_age: Callable[[], float],
        snapshot_version: Callable[[], float],
        store_connected: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}  # (metric, label values) -> child
        self._request_metrics()
        self._store_gauges(snapshot_age, snapshot_version, store_connected)
        self._resilience_metrics()
        self._model_metrics()
        self._tenant_metrics()

    def _request_metrics(self) -> None:
        r = self.registry
        self.counts = RequestCounters()  # requests, attempts, time to first byte
        r.register(self.counts)
        self.retries = Counter(
            "meridian_edge_retries", "Attempts beyond the first, by reason", ["reason"], registry=r
        )
        self.malformed_events = Counter(
            "meridian_edge_malformed_events",
            "Stream events a region sent that were not well-formed (not JSON, or cut off): dropped",
            ["region"],
            registry=r,
        )
        self.stream_aborts = Counter(
            "meridian_edge_stream_aborts", "Streams cut after the first byte", ["region", "side"], registry=r
        )
        self.geoip_lookups = Counter(
            "meridian_edge_geoip_lookups",
            "GeoIP database lookups (each address once: they are memoised) by result: hit, not_found, "
            "no_location, bad_record, error",
            ["result"],
            registry=r,
        )
        self.snapshots_refused = Counter(
            "meridian_edge_snapshots_refused",
            "Store states not taken: older than the edge's (rollback), incomplete, or with an invalid record "
            "(quarantined: the rest was taken)",
            ["reason"],
            registry=r,
        )
        self.misrouted = Counter(
            "meridian_edge_misrouted_requests",
            "Requests from clients that another edge is nearer to (geo-DNS to tune), by that edge",
            ["nearer_edge"],
            registry=r,
        )
        self.bad_input = Counter(
            "meridian_edge_bad_input", "Client input rejected or ignored", ["what"], registry=r
        )

    def _model_metrics(self) -> None:
        r = self.registry
        self.limits_primary_failures = Counter(
            "meridian_edge_limits_primary_failures",
            "Calls to the limits authority (the Redis primary) that failed: refused (an error it answered, "
            "e.g. NOPERM: a misconfiguration) or unreachable (an outage); the local share decides meanwhile",
            ["kind"],
            registry=r,
        )
        self.limits_primary_waits = Counter(
            "meridian_edge_limits_primary_waits",
            "Requests that waited for a call to the limits authority (the Redis primary) before going on: "
            "a lease, a concurrent slot or a budget top-up this edge did not hold ahead",
            ["what"],
            registry=r,
        )
        self.keys_stale = Counter(
            "meridian_edge_keys_stale_refusals",
            "Requests refused because the API keys were not loaded yet or could not be confirmed within "
            "MERIDIAN_TENANTS_MAX_AGE_S",
            registry=r,
        )
        self.rate_limited = Counter(
            "meridian_edge_rate_limited",
            "Requests refused by a tenant limit, by which",
            ["limit"],
            registry=r,
        )
        self.model_not_found = Counter(
            "meridian_edge_model_not_found", "Requests naming a model the catalog does not have", registry=r
        )
        self.model_fallbacks = Counter(
            "meridian_edge_model_fallbacks",
            "Requests served by a fallback model (no region serving the requested one was routable)",
            ["requested", "served"],
            registry=r,
        )
        self.affinity = Gauge(
            "meridian_edge_affinity_picks",
            "Replica picks by affinity key: on the key's own replica (hit) or overflowed past a full one",
            ["result"],
            registry=r,
        )
        self.signal_age = Gauge(
            "meridian_edge_engine_signal_age_seconds",
            "Age of the oldest engine signal of a region's replicas (-1: none published)",
            ["region"],
            registry=r,
        )

    def _tenant_metrics(self) -> None:
        r = self.registry
        self.tenants = TenantCounters()
        r.register(self.tenants)
        self.usage_rows_dropped = Counter(
            "meridian_edge_usage_rows_dropped",
            "Usage rows lost (the ledger was full while the store was unreachable)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "meridian_edge_queue_depth", "Requests held while their pool is saturated", ["band"], registry=r
        )
        self.queue_wait = Histogram(
            "meridian_edge_queue_wait_seconds",
            "How long held requests waited before they went",
            ["band"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.wake_held = Gauge(
            "meridian_edge_wake_held",
            "Requests held while a pool that scaled to zero starts its first replica",
            ["region"],
            registry=r,
        )
        self.wake_outcomes = Counter(
            "meridian_edge_wake_outcomes",
            "Requests held for a first replica, by how it ended: served, timeout (503), full (503 at once)",
            ["outcome"],
            registry=r,
        )
        self.shed = Counter(
            "meridian_edge_shed",
            "Held requests refused with 503 overloaded: band full, or waited past the band's limit",
            ["band", "reason"],
            registry=r,
        )
        self.saturated_pools = Counter(
            "meridian_edge_saturation_episodes",
            "Times this edge found every replica of a pool saturated and began holding requests",
            ["region"],
            registry=r,
        )

    def watch_replicas(
        self, regions: tuple[str, ...], affinity: dict[str, int], age: Callable[[str], float | None]
    ) -> None:
        """Gauges read at scrape time: affinity picks so far, and each region's oldest engine signal."""

        def picks(result: str) -> Callable[[], float]:
            return lambda: float(affinity[result])

        def oldest(region: str) -> Callable[[], float]:
            return lambda: -1.0 if (a := age(region)) is None else a

        for result in affinity:
            self.affinity.labels(result).set_function(picks(result))
        for region in regions:
            self.signal_age.labels(region).set_function(oldest(region))

    def _store_gauges(
        self,
        snapshot_age: Callable[[], float],
        snapshot_version: Callable[[], float],
        store_connected: Callable[[], float],
    ) -> None:
        r = self.registry
        age = Gauge(
            "meridian_edge_snapshot_age_seconds",
            "Seconds since the routing snapshot was last confirmed against Redis (-1: none)",
            registry=r,
        )
        age.set_function(snapshot_age)
        ver = Gauge("meridian_edge_snapshot_version", "Store version of the routing snapshot", registry=r)
        ver.set_function(snapshot_version)
        up = Gauge("meridian_edge_store_connected", "1 while the edge follows its Redis replica", registry=r)
        up.set_function(store_connected)

    def _resilience_metrics(self) -> None:
        r = self.registry
        self.failovers = Counter(
            "meridian_edge_failovers",
            "Attempts moved to another region before the first byte",
            ["src", "dst"],
            registry=r,
        )
        self.retry_denied = Counter(
            "meridian_edge_retry_denied",
            "Retries not made (budget exhausted or deadline)",
            ["reason"],
            registry=r,
        )
        self.ejections = Counter(
            "meridian_edge_ejections", "Passive outlier ejections", ["level", "region"], registry=r
        )
        self.panic = Counter(
            "meridian_edge_panic_routing", "Requests routed in panic (fail-open) mode", registry=r
        )
        self.fallback = Counter(
            "meridian_edge_no_snapshot_routing",
            "Requests routed on regions.yaml alone (no snapshot yet)",
            registry=r,
        )
        self.hedges = Counter(
            "meridian_edge_hedges",
            "Hedged attempts by outcome (sent, won, cancelled)",
            ["outcome", "region"],
            registry=r,
        )
        self.hedge_delay = Gauge(
            "meridian_edge_hedge_delay_seconds",
            "Current hedge delay per primary region",
            ["region"],
            registry=r,
        )
        self.hedge_extra_load = Gauge(
            "meridian_edge_hedge_extra_load_ratio",
            "Hedges sent per hedge-eligible critical request",
            registry=r,
        )
        self.observations_dropped = Counter(
            "meridian_edge_observations_dropped", "Observation rows that could not be sent", registry=r
        )

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, memoised: the label lookup is most of a counter's cost per request."""
        key = (metric, values)
        hit = self._children.get(key)
        if hit is None:
            hit = self._children[key] = metric.labels(*values)
        return hit
