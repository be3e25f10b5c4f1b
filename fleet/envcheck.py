"""Every MERIDIAN_* variable any component reads (pure, no I/O): a variable that is none of them — a typo, or
a setting that was renamed — stops start-up with one line naming it and the closest real one, never
silently ignored. ``tests/test_envcheck.py`` keeps the list equal to the settings models' fields."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "MERIDIAN_"

# the edge's and the control plane's settings (edge/settings.py, controlplane/settings.py)
SETTINGS: frozenset[str] = frozenset(
    PREFIX + name
    for name in [
        "ACCESS_LOG",
        "ADMIN_TOKENS",
        "AFFINITY_LOAD_FACTOR",
        "AUTH",
        "AUTOSCALER",
        "BODY_TIMEOUT_S",
        "DEFAULT_MAX_TOKENS",
        "FAILBACK_HOLD_BASE_S",
        "FAILBACK_RAMP_S",
        "GEOIP_DB",
        "HEDGE_BUDGET_BURST",
        "HEDGE_BUDGET_RATIO",
        "HEDGE_DELAY_BODY_MULTIPLE",
        "HEDGE_DELAY_CEILING_S",
        "HEDGE_DELAY_FLOOR_S",
        "HEDGE_DELAY_SLACK",
        "HEDGE_ENABLED",
        "HEDGE_FIXED_DELAY_S",
        "HEDGE_MAX_BACKUP_UTILIZATION",
        "HEDGE_QUANTILE",
        "HEDGE_WIN_REFUND",
        "HOST",
        "INTERNAL_HOST",
        "INTERNAL_PORT",
        "KEY_SECRET",
        "LATENCY_CHANGE",
        "LOG_LEVEL",
        "MAX_BODY_BYTES",
        "OBSERVATION_INTERVAL_S",
        "OUTLIER_BASE_EJECTION_S",
        "OUTLIER_CONSECUTIVE_FAILURES",
        "OUTLIER_FAILURE_RATE",
        "OUTLIER_MAX_EJECTION_FRACTION",
        "OUTLIER_MAX_EJECTION_S",
        "OUTLIER_PROBE_INTERVAL_S",
        "POOL_SIZE",
        "PORT",
        "PROBE_ENABLED",
        "PROBE_FALL",
        "PROBE_INTERVAL_S",
        "PROBE_PATH",
        "PROBE_RISE",
        "PROBE_TIMEOUT_S",
        "QUEUE",
        "REDIS_PASSWORD",
        "REDIS_PRIMARY_URL",
        "REDIS_URL",
        "REDIS_USERNAME",
        "REGION",
        "REGIONS_FILE",
        "REGION_API_KEY",
        "REPLICA_HEADER",
        "REPLICA_WEIGHTS",
        "RESYNC_INTERVAL_S",
        "RETRY_BACKOFF_BASE_S",
        "RETRY_BACKOFF_CAP_S",
        "RETRY_BUDGET_MIN_PER_S",
        "RETRY_BUDGET_RATIO",
        "RETRY_MAX_ATTEMPTS",
        "RTT_PROBE_INTERVAL_S",
        "RTT_PROBE_TIMEOUT_S",
        "SATURATION_KV_CACHE",
        "SATURATION_WAITING",
        "SERVICE_NAME",
        "SIGNALS_INTERVAL_S",
        "SIGNALS_POLL_S",
        "SIGNAL_MAX_AGE_S",
        "SLOW_START_S",
        "SPOT_NOTICES",
        "TENANTS_MAX_AGE_S",
        "TENANTS_POLL_S",
        "TIMEOUTS",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "TRACING_EXPORTER",
        "TRACING_SAMPLE_RATIO",
        "TRACING_TRUSTED_PEERS",
        "TRUSTED_PROXIES",
        "UPSTREAM_KEEPALIVE_S",
        "UTILIZATION_CHANGE",
        "WAKE_HOLD_S",
        "WAKE_MAX_HELD",
        "WORKERS",
    ]
)
# what the meridian command reads besides: ctl's admin URL and token, the demo's token
COMMAND: frozenset[str] = frozenset({PREFIX + "ADMIN_URL", PREFIX + "TOKEN", PREFIX + "DEMO_TOKEN"})
KNOWN = SETTINGS | COMMAND
# settings that became part of another (the README once documented these)
MOVED: dict[str, str] = {
    PREFIX + f"{part}_TIMEOUT_S": PREFIX + "TIMEOUTS" for part in ("CONNECT", "TTFB", "IDLE", "TOTAL")
}


def unknown(names: Iterable[str], *, source: str) -> str | None:
    """One line naming the first MERIDIAN_* variable in ``names`` that no component reads, and the closest
    real setting (None: every one is known). ``source``: where the names came from."""
    for name in sorted(n for n in names if n.upper().startswith(PREFIX) and n.upper() not in KNOWN):
        close = [MOVED[name.upper()]] if name.upper() in MOVED else []
        close = close or difflib.get_close_matches(name.upper(), sorted(KNOWN), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown setting {name} ({source}): no Meridian component reads it{hint}"
    return None


def check(environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> str | None:
    """The environment's and the .env file's variables checked (None: nothing unknown)."""
    return unknown(environ, source="environment") or unknown(dotenv, source=".env")
