"""The edge's parts built from its settings, one builder per concern (I/O only in the clients they open):
what ``edge.server.app.Edge`` composes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

from edge.admission.budgets import Budgets
from edge.admission.fairqueue import BandLimits
from edge.admission.gate import Gate
from edge.admission.geo import GeoLocator
from edge.admission.limiter import Limiter
from edge.admission.tenants import TenantsFeed
from edge.admission.wake import Waker
from edge.routing.candidates import PickPolicy
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector, OutlierPolicy
from edge.routing.planner import Planner, ReplicaTuning
from edge.routing.signals import SignalsFeed
from edge.routing.snapshot import SnapshotFeed
from edge.settings import EdgeSettings
from edge.telemetry import tracing
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.observed import Observed
from edge.transport.continuation import Continuable
from edge.transport.forwarder import Resilience
from edge.transport.hedging import HedgeBudget, HedgePolicy
from edge.transport.retry_budget import RetryBudget
from edge.transport.rtt import RttProber
from edge.transport.upstream import UpstreamPool
from fleet.redisconn import connect
from fleet.state import Region, Snapshot, Topology, initial_state

LEASE_TIMEOUT_S = 1.0  # a limit lease slower than this fails: the edge enforces its local share meanwhile


def connect_store(settings: EdgeSettings, url: str, *, socket_timeout: float) -> Redis:
    """A client for one of this edge's Redis URLs, with the ACL user from the settings when set."""
    password = settings.redis_password
    return connect(
        url,
        socket_timeout=socket_timeout,
        username=settings.redis_username,
        password=None if password is None else password.get_secret_value(),
    )


def planner(
    settings: EdgeSettings,
    topo: Topology,
    resilience: Resilience,
    observed: Observed,
    signals: SignalsFeed,
    rng: random.Random,
) -> Planner:
    return Planner(
        topology=topo,
        edge=settings.region,
        outliers=resilience.outliers,
        failback=Failback(ramp_s=settings.failback_ramp_s, hold_base_s=settings.failback_hold_base_s),
        observed=observed,
        rng=rng,
        clock=time.monotonic,
        max_attempts=settings.retry_max_attempts,
        signals=signals.get,
        tuning=ReplicaTuning(
            pick=PickPolicy(
                max_waiting=settings.saturation_waiting,
                max_kv=settings.saturation_kv_cache,
                load_factor=settings.affinity_load_factor,
                weights=tuple(settings.replica_weights.items()),
            ),
            signal_max_age_s=settings.signal_max_age_s,
            slow_start_s=settings.slow_start_s,
        ),
    )


def resilience(settings: EdgeSettings, topo: Topology, rng: random.Random) -> Resilience:
    return Resilience(
        outliers=OutlierDetector(
            policy=OutlierPolicy(
                consecutive_failures=settings.outlier_consecutive_failures,
                failure_rate=settings.outlier_failure_rate,
                base_ejection_s=settings.outlier_base_ejection_s,
                max_ejection_s=settings.outlier_max_ejection_s,
                probe_interval_s=settings.outlier_probe_interval_s,
            ),
            max_ejection_fraction=settings.outlier_max_ejection_fraction,
        ),
        budget=RetryBudget(ratio=settings.retry_budget_ratio, min_per_s=settings.retry_budget_min_per_s),
        rng=rng,
        backoff_base_s=settings.retry_backoff_base_s,
        backoff_cap_s=settings.retry_backoff_cap_s,
        replica_counts={r.name: len(r.replicas) for r in topo.regions},
    )


def hedging(settings: EdgeSettings) -> HedgePolicy:
    return HedgePolicy(
        quantile=settings.hedge_quantile,
        fixed_delay_s=settings.hedge_fixed_delay_s,
        floor_s=settings.hedge_delay_floor_s,
        ceiling_s=settings.hedge_delay_ceiling_s,
        slack=settings.hedge_delay_slack,
        body_multiple=settings.hedge_delay_body_multiple,
        max_backup_utilization=settings.hedge_max_backup_utilization,
        budget=HedgeBudget(
            ratio=settings.hedge_budget_ratio,
            burst=settings.hedge_budget_burst,
            tokens=settings.hedge_budget_burst,
            win_refund=settings.hedge_win_refund,
        ),
    )


def home_region(settings: EdgeSettings, topo: Topology) -> Region:
    """This edge's region in the topology (a start-up error naming the setting when it is not there)."""
    home = topo.region(settings.region)
    if home is None:
        raise ConfigError(
            f"MERIDIAN_REGION={settings.region!r} is not a region in {settings.regions_file} "
            f"(known: {', '.join(topo.names)})"
        )
    return home


class ConfigError(RuntimeError):
    """The edge cannot start with this configuration (message names the setting)."""


def snapshot_feed(settings: EdgeSettings, topo: Topology, on_refused: Callable[[str], None]) -> SnapshotFeed:
    return SnapshotFeed(
        url=settings.redis_url,
        resync_interval_s=settings.resync_interval_s,
        topology=topo.names,
        connect=lambda url: connect_store(settings, url, socket_timeout=2.0),
        on_refused=on_refused,
        first_from=settings.redis_primary_url,
    )


def metrics(feed: SnapshotFeed) -> EdgeMetrics:
    return EdgeMetrics(
        snapshot_age=lambda: -1.0 if (a := feed.age()) is None else a,
        snapshot_version=lambda: float(feed.current.version) if feed.current else -1.0,
        store_connected=lambda: 1.0 if feed.connected else 0.0,
    )


def geo(settings: EdgeSettings, home: Region, m: EdgeMetrics) -> GeoLocator:
    return GeoLocator(
        settings.geoip_db,
        fallback=home.location,
        on_result=lambda result: m.child(m.geoip_lookups, result).inc(),
    )


def signals_feed(settings: EdgeSettings) -> SignalsFeed:
    return SignalsFeed(
        url=settings.redis_url,
        poll_s=settings.signals_poll_s,
        connect=lambda url: connect_store(settings, url, socket_timeout=2.0),
    )


def tenancy(
    settings: EdgeSettings, topo: Topology, m: EdgeMetrics
) -> tuple[TenantsFeed | None, Limiter | None, Budgets | None]:
    """Keys, limits and budgets: only with auth on and a key secret (else the edge serves anonymously)."""
    secret = settings.key_secret
    if not settings.auth or secret is None:
        return None, None, None
    tenants = TenantsFeed(
        url=settings.redis_url,
        poll_s=settings.tenants_poll_s,
        max_age_s=settings.tenants_max_age_s,
        secret=secret.get_secret_value().encode(),
        connect=lambda url: connect_store(settings, url, socket_timeout=2.0),
        primary_url=settings.redis_primary_url,
    )
    # tenant limits are leased from the primary (the replica cannot take writes)
    failures, waits = m.limits_primary_failures, m.limits_primary_waits
    limiter = Limiter(
        client=connect_store(
            settings, settings.redis_primary_url or settings.redis_url, socket_timeout=LEASE_TIMEOUT_S
        ),
        edges=len(topo.regions) * settings.workers,
        on_failure=lambda kind: failures.labels(kind=kind).inc(),
        on_wait=lambda what: waits.labels(what=what).inc(),
    )
    return tenants, limiter, Budgets(limiter)


def fallback_snapshot(topo: Topology) -> Snapshot:
    """What the edge routes on before its first snapshot: every region as regions.yaml declares it."""
    return Snapshot(
        version=-1, regions={r.name: initial_state(r, now=0.0) for r in topo.regions}, taken_at=0.0
    )


def gate(settings: EdgeSettings, plans: Planner, signals: SignalsFeed, m: EdgeMetrics) -> Gate:
    return Gate(
        load=plans.pool_load,
        signals=signals.get,
        metrics=m,
        bands={b: BandLimits(q.size, q.wait_s) for b, q in settings.queue.items()},
        max_waiting=settings.saturation_waiting,
    )


def waker(settings: EdgeSettings, topo: Topology, m: EdgeMetrics) -> Waker:
    """The waker with its own client on the primary (wake marks are written there)."""
    return Waker(
        topology=topo,
        edge=settings.region,
        hold_s=settings.wake_hold_s,
        max_held=settings.wake_max_held,
        metrics=m,
        client=connect_store(settings, settings.redis_primary_url or settings.redis_url, socket_timeout=1.0),
    )


def tracer_provider(settings: EdgeSettings) -> TracerProvider:
    return tracing.make_tracer_provider(
        service_name=settings.service_name, region=settings.region, exporter=settings.tracing_exporter
    )


def rtt(settings: EdgeSettings, topo: Topology, pool: UpstreamPool, observed: Observed) -> RttProber:
    return RttProber(
        pool=pool,
        topology=topo,
        edge=settings.region,
        observed=observed,
        interval_s=settings.rtt_probe_interval_s,
        timeout_s=settings.rtt_probe_timeout_s,
    )


CONTINUING_ENGINES = frozenset({"vllm", "sglang"})  # take continue_final_message with add_generation_prompt


def continuable(topo: Topology) -> Continuable:
    """Where a broken-off chat stream may go on: the catalog's word per model, else the replica's engine."""
    engines = frozenset(
        (r.name, rep.name)
        for r in topo.regions
        for rep in r.replicas
        if r.engine_of(rep) in CONTINUING_ENGINES
    )
    catalog = topo.catalog
    said = {m: ok for m in catalog.models if (ok := catalog.continuation(m)) is not None}
    return Continuable(engines, said or None)
