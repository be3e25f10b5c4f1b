"""Edge settings (pydantic-settings, MERIDIAN_ prefix, optional .env); no I/O beyond reading env."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edge.peers import IPNetwork
from fleet.redisconn import RedisURL
from fleet.secret import Secret
from fleet.tenants import Priority
from fleet.topology import LogLevel


class TimeoutSet(BaseModel):
    """Upstream timeouts for one priority class (seconds)."""

    connect_s: float = Field(default=1.0, gt=0)
    ttfb_s: float = Field(
        default=30.0, gt=0, description="until response headers (all attempts share total_s)"
    )
    first_token_s: float = Field(
        default=10.0,
        gt=0,
        description="until a stream's first event (headers come at once from streaming servers); past it the "
        "attempt is abandoned and the request tried elsewhere (a model's own first_token_timeout_s wins)",
    )
    idle_s: float = Field(
        default=15.0,
        gt=0,
        description="max gap between stream chunks: a longer stall is a cut (the stream goes on elsewhere)",
    )
    total_s: float = Field(default=600.0, gt=0, description="one deadline over every attempt")


DEFAULT_TIMEOUTS: dict[Priority, TimeoutSet] = {
    "critical": TimeoutSet(connect_s=0.5, ttfb_s=10.0, first_token_s=5.0, idle_s=10.0, total_s=300.0),
    "normal": TimeoutSet(connect_s=1.0, ttfb_s=30.0, first_token_s=10.0, idle_s=15.0, total_s=600.0),
    "batch": TimeoutSet(connect_s=2.0, ttfb_s=120.0, first_token_s=60.0, idle_s=60.0, total_s=3600.0),
}


class QueueBand(BaseModel):
    """How a priority band holds requests while their pool is saturated."""

    size: int = Field(ge=0, le=1_000_000, description="requests held at most (0: shed at once)")
    wait_s: float = Field(gt=0, le=600, description="a held request is shed (503 overloaded) after this")


DEFAULT_QUEUE: dict[Priority, QueueBand] = {
    "critical": QueueBand(size=256, wait_s=10.0),
    "normal": QueueBand(size=256, wait_s=5.0),
    "batch": QueueBand(size=128, wait_s=2.0),
}

READINESS_PATH = "/readyz"
DEFAULT_PORT = 8080


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MERIDIAN_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    region: str = Field(description="the region this edge runs in (a name from regions.yaml)")
    regions_file: Path = Path("regions.yaml")
    """the topology file"""
    redis_url: RedisURL = Field(
        default="redis://127.0.0.1:6379/0", description="this region's Redis replica (read)"
    )
    redis_primary_url: RedisURL | None = Field(
        default=None, description="the Redis primary, for observations (best effort); none disables reporting"
    )
    redis_username: str | None = Field(
        default=None, description="ACL user for both Redis URLs, when they carry none"
    )
    redis_password: SecretStr | None = Field(default=None, description="its password (never logged)")
    host: str = "0.0.0.0"
    """the client listener's address"""
    internal_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="when set, /metrics and /_meridian/route are served only on this internal listener "
        "(MERIDIAN_INTERNAL_HOST), not to clients",
    )
    internal_host: str = Field(default="127.0.0.1", description="the internal listener's address")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    """the client listener's port"""
    workers: int = Field(default=1, ge=1, le=64, description="processes sharing the port via SO_REUSEPORT")
    geoip_db: Path | None = Field(default=None, description="a GeoIP2/GeoLite2 City .mmdb file")
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        default_factory=tuple, description="CIDRs whose X-Forwarded-For is believed (comma-separated)"
    )
    tracing_trusted_peers: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        default_factory=tuple,
        description="CIDRs whose traceparent sampling decision is followed (comma-separated); other "
        "clients' trace contexts are linked, and the edge's own sampler decides",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="request bodies above this get 413")
    body_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="a request body must arrive within this long, else 408"
    )
    resync_interval_s: float = Field(default=5.0, gt=0, le=300)
    """re-read the state store this often even without a change notice"""
    access_log: bool = False
    """one log line per answer (logger meridian.access: client, request line, status, bytes, seconds and its
    x-request-id, the trace id); off by default: it costs a log record per request"""
    observation_interval_s: float = Field(default=1.0, gt=0, le=300)
    """how often this edge reports what it saw of each region (latency, errors) to the primary"""
    timeouts: dict[Priority, TimeoutSet] = Field(
        default_factory=lambda: dict(DEFAULT_TIMEOUTS),
        description='per priority, JSON: {"critical": {"connect_s": .5, "ttfb_s": 10, "total_s": 300}}',
    )
    queue: dict[Priority, QueueBand] = Field(
        default_factory=lambda: dict(DEFAULT_QUEUE),
        description="while every replica of a pool is saturated, per priority band, JSON: "
        '{"batch": {"size": 128, "wait_s": 2}}',
    )
    retry_max_attempts: int = Field(default=3, ge=1, le=10, description="attempts per request, all regions")
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1, description="retries per original request")
    retry_budget_min_per_s: float = Field(default=3.0, ge=0, description="retry floor per second")
    retry_backoff_base_s: float = Field(default=0.005, ge=0)
    """a retry waits a full-jitter backoff: its base"""
    retry_backoff_cap_s: float = Field(default=0.05, ge=0)
    """and its cap"""
    outlier_consecutive_failures: int = Field(default=5, ge=1)
    """a replica's or region's breaker opens after this many failures in a row"""
    outlier_failure_rate: float = Field(default=0.5, gt=0, le=1)
    """or at this failure rate over its recent attempts"""
    outlier_base_ejection_s: float = Field(default=2.0, gt=0)
    """the first ejection; each ejection in a row doubles it"""
    outlier_max_ejection_s: float = Field(default=60.0, gt=0)
    """the longest ejection"""
    outlier_max_ejection_fraction: float = Field(
        default=0.5, ge=0, le=1, description="of a region's replicas"
    )
    outlier_probe_interval_s: float = Field(default=0.5, gt=0, description="half-open probation trickle")
    hedge_enabled: bool = True
    """hedge critical requests on policy.hedgeable_routes to the backup region"""
    hedge_quantile: float = Field(default=0.95, gt=0, lt=1, description="adaptive delay: this TTFB quantile")
    hedge_delay_slack: float = Field(
        default=0.05,
        ge=0,
        description="adaptive delay = quantile x (1 + slack): a primary just past the quantile is jitter, "
        "not a straggler; without slack normal requests near the quantile spend the budget before the tail",
    )
    hedge_fixed_delay_s: float | None = Field(
        default=None, gt=0, description="fixed delay instead of adaptive"
    )
    hedge_delay_body_multiple: float | None = Field(
        default=3.0,
        gt=1,
        description="the adaptive delay is at most this many times the median time to first byte (the "
        "stragglers move the quantile, not the median); null: the quantile alone",
    )
    hedge_win_refund: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="share of its budget token a hedge gets back when it wins and cancels its primary",
    )
    hedge_delay_floor_s: float = Field(default=0.02, ge=0)
    """the adaptive hedge delay's lower bound"""
    hedge_delay_ceiling_s: float = Field(default=2.0, gt=0)
    """its upper bound, and the delay before any history"""
    hedge_budget_ratio: float = Field(
        default=0.05, ge=0, le=1, description="budget tokens earned per critical request (a hedge costs one)"
    )
    hedge_budget_burst: float = Field(default=5.0, ge=1)
    """budget tokens held at most"""
    hedge_max_backup_utilization: float = Field(default=0.8, gt=0, le=1)
    """no hedge to a backup region busier than this"""
    rtt_probe_interval_s: float = Field(
        default=2.0, gt=0, le=300, description="this edge's round-trip probe to each region, every this long"
    )
    rtt_probe_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """a round-trip probe slower than this is lost"""
    failback_ramp_s: float = Field(default=30.0, ge=0, description="slow start for a recovered region")
    slow_start_s: float = Field(
        default=30.0, ge=0, description="a replica that joins or comes back ramps to its full share over this"
    )
    signals_poll_s: float = Field(default=0.5, gt=0, le=60, description="read the engine signals this often")
    signal_max_age_s: float = Field(
        default=5.0, gt=0, description="older engine signals are ignored (outstanding requests decide)"
    )
    saturation_waiting: float = Field(default=5.0, gt=0, description="a replica with this many waiting ...")
    saturation_kv_cache: float = Field(
        default=0.8, gt=0, le=1, description="... or this KV-cache use is full"
    )
    affinity_load_factor: float = Field(
        default=1.25,
        gt=1,
        le=10,
        description="c: a key overflows past a replica above c x mean",
    )
    replica_weights: dict[
        Literal["load", "engine"], Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]
    ] = Field(
        default={"load": 1.0, "engine": 1.0},
        description="the replica scorers' weights (exponents; 0 switches one off): load = this edge's "
        "outstanding requests against slow start, engine = the engine's queue and KV cache",
    )
    auth: bool = Field(default=True, description="require an API key (Authorization: Bearer) to be served")
    key_secret: Secret | None = Field(
        default=None, description="HMAC secret of API-key digests (the control plane's)"
    )
    region_api_key: SecretStr | None = Field(
        default=None, description="what regions get as Authorization: Bearer (never the client's key)"
    )
    default_max_tokens: int = Field(
        default=1024,
        ge=1,
        description="the most a request that sets no max_tokens is reserved for what it generates (below "
        "that, its model's context length less the prompt)",
    )
    wake_hold_s: float = Field(
        default=150.0,
        gt=0,
        le=3600,
        description="a request for a model whose pools scaled to zero waits this long for a first replica",
    )
    wake_max_held: int = Field(
        default=1000, ge=0, description="requests held for first replicas at most (more: 503 at once)"
    )
    tenants_poll_s: float = Field(default=0.5, gt=0, le=60, description="read tenants and keys this often")
    tenants_max_age_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="keys not confirmed against the replica for this long: stop admitting (503, /readyz "
        "not ready) rather than honour a key that may have been revoked since",
    )
    replica_header: bool = Field(default=True, description="name the serving replica in X-Meridian-Replica")
    failback_hold_base_s: float = Field(default=5.0, ge=0, description="hold-down for a flapping region")
    pool_size: int = Field(
        default=16384, ge=1, description="connections to regions, total (streams hold one each)"
    )
    upstream_keepalive_s: float = Field(
        default=4.0,
        gt=0,
        description="idle connections to regions are closed after this long: below the servers' own idle "
        "timeout (uvicorn, which vLLM and SGLang use, closes after 5 s), so a request never races a close",
    )
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    """where spans go (otlp: the OTEL_EXPORTER_OTLP_* variables say where)"""
    tracing_sample_ratio: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="share of new traces recorded; a sampled parent is always followed",
    )
    service_name: str = "meridian-edge"
    """OpenTelemetry's service.name"""
    log_level: LogLevel = "INFO"
    """the log level"""

    @model_validator(mode="after")
    def _auth_needs_the_secret(self) -> EdgeSettings:
        if self.auth and self.key_secret is None:
            raise ValueError(
                "MERIDIAN_KEY_SECRET is required while MERIDIAN_AUTH is on (the control plane's key secret); "
                "or set MERIDIAN_AUTH=false to serve without API keys"
            )
        return self

    @field_validator("timeouts", mode="after")
    @classmethod
    def _fill(cls, v: dict[Priority, TimeoutSet]) -> dict[Priority, TimeoutSet]:
        return {**DEFAULT_TIMEOUTS, **v}

    @field_validator("queue", mode="after")
    @classmethod
    def _fill_queue(cls, v: dict[Priority, QueueBand]) -> dict[Priority, QueueBand]:
        return {**DEFAULT_QUEUE, **v}

    @field_validator("trusted_proxies", "tracing_trusted_peers", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v
