"""Every Redis key and channel name of a Meridian fleet, in one place (pure, no I/O); the ACL users
(``fleet.acl``) are built from these. One namespace, so a shared Redis can hold several Meridians under
other prefixes. ``state:*`` is what edges read (replicated to every region); the rest is written by edges
(each in its own name where it can be: ``:<edge>``) or by the control plane."""

from __future__ import annotations

KEY_PREFIX = "meridian"

# routing state: the control plane writes, every edge reads and follows
KEY_VERSION = f"{KEY_PREFIX}:state:version"
KEY_EPOCH = f"{KEY_PREFIX}:state:epoch"  # raised only by a deliberate, audited reset of the state
KEY_REGIONS = f"{KEY_PREFIX}:state:regions"
CHANNEL_CHANGES = f"{KEY_PREFIX}:state:changes"
KEY_SIGNALS = f"{KEY_PREFIX}:state:signals"  # hash: "region/replica" -> EngineSignals JSON
KEY_POOLS = f"{KEY_PREFIX}:state:pools"  # hash: "region/model" -> PoolStatus JSON
KEY_TENANTS = f"{KEY_PREFIX}:state:tenants"  # hash: tenant id -> Tenant JSON
KEY_API_KEYS = f"{KEY_PREFIX}:state:api_keys"  # hash: key digest -> ApiKey JSON
KEY_TENANTS_VERSION = f"{KEY_PREFIX}:state:tenants_version"  # raised by every change: edges reload on it

# the control plane's own
KEY_AUDIT = f"{KEY_PREFIX}:audit"
KEY_RUNS = f"{KEY_PREFIX}:runs"  # hash: run id -> SwitchRun JSON (a drain or switch, when edges applied it)
KEY_EDGES = f"{KEY_PREFIX}:edges"  # a set: every edge the topology ever named (whose usage keys to read)

# written by the edges, each in its own name
KEY_OBSERVATIONS = f"{KEY_PREFIX}:observations"  # + ":<edge>": one stream per edge
KEY_APPLIED = f"{KEY_PREFIX}:applied"  # + ":<edge>": hash (fleet.state.Applied): what the edge last applied
KEY_ACTIVE = f"{KEY_PREFIX}:active"  # + ":<edge>": hash data (JSON: its requests in flight), at (ms)
KEY_CANCEL = f"{KEY_PREFIX}:cancel"  # + ":<edge>": hash request key -> asked at (ms), by an operator
KEY_USAGE = f"{KEY_PREFIX}:usage"  # + ":<edge>:<tenant>:<hour>"
KEY_TRAFFIC = f"{KEY_PREFIX}:traffic"  # + ":<edge>:<region>:<minute>": what capacity planning reads
KEY_WAKE = f"{KEY_PREFIX}:wake"  # + ":<region>:<model>": requests held for a pool at zero

# shared by every edge: one count per tenant, leased by script on the primary
KEY_LIMITS = f"{KEY_PREFIX}:limits"
KEY_LIVE_EDGES = f"{KEY_LIMITS}:edges"  # hash: edge process id -> expiry (ms): the live edge processes
KEY_BUDGETS = f"{KEY_LIMITS}:budget"  # + ":<tenant>:<period id>": the period's spend and holds


def active_key(edge: str) -> str:
    """The hash ``edge`` publishes its requests in flight to (the console's view)."""
    return f"{KEY_ACTIVE}:{edge}"


def cancel_key(edge: str) -> str:
    """The hash of ``edge``'s requests an operator asked to cancel (the edge reads and clears it)."""
    return f"{KEY_CANCEL}:{edge}"


def applied_key(edge: str) -> str:
    """The hash ``edge`` writes what it last applied to (``fleet.state.Applied``): positions, when."""
    return f"{KEY_APPLIED}:{edge}"


def observations_key(edge: str) -> str:
    return f"{KEY_OBSERVATIONS}:{edge}"


def usage_key(edge: str | None, tenant: str, hour: int) -> str:
    """The hash ``edge`` adds to; ``edge`` None: the one all edges shared before per-edge users."""
    return f"{KEY_USAGE}:{tenant}:{hour}" if edge is None else f"{KEY_USAGE}:{edge}:{tenant}:{hour}"


def traffic_key(edge: str | None, region: str, minute: int) -> str:
    """The hash ``edge`` adds to; ``edge`` None: the one all edges shared before per-edge users."""
    return f"{KEY_TRAFFIC}:{region}:{minute}" if edge is None else f"{KEY_TRAFFIC}:{edge}:{region}:{minute}"


def wake_key(region: str, model: str) -> str:
    return f"{KEY_WAKE}:{region}:{model}"


def limit_key(tenant: str, name: str) -> str:
    """A tenant's limit state (``name``: a dimension, or ``concurrent``)."""
    return f"{KEY_LIMITS}:{tenant}:{name}"


def budget_key(tenant: str, period: str) -> str:
    return f"{KEY_BUDGETS}:{tenant}:{period}"
