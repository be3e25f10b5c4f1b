"""Usage records as the store holds them (pure, no I/O): per tenant, model, region and hour, the requests
an edge admitted, their prompt and completion tokens, what they cost and how many failed; and the same per
region, model and minute for all tenants together (``meridian:traffic:<region>:<minute>``, kept 35 days),
the history capacity planning reads. Each edge adds its batches with
HINCRBY into its own hash per tenant and hour (``meridian:usage:<edge>:<tenant>:<hour>``, field
``<region>|<counter>|<model>``: the model last, as its name may hold anything), which only its ACL user may
write; the control plane reads the hours asked for from every edge (and the keys of before per-edge users,
``meridian:usage:<tenant>:<hour>``), and leaves out what no edge could have counted (``plausible``).
Hours are unix hours (seconds since the epoch // 3600)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

TRAFFIC_RETENTION_S = 35 * 86_400
COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "errors", "spend_nusd")
RETENTION_S = 400 * 86_400  # each hour's hash expires this long after its last write (13 months of bills)


@dataclass(slots=True)
class UsageRow:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    spend_nusd: int = 0  # at the catalog's prices when served, in nano-dollars (fleet.spend)

    def merge(self, other: UsageRow) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.errors += other.errors
        self.spend_nusd += other.spend_nusd

    def counts(self) -> dict[str, int]:
        return asdict(self)


def hour_of(unix_s: float) -> int:
    return int(unix_s // 3600)


# What one edge can count for one tenant, model and region in an hour, far above any real edge: a row
# beyond these was forged with the edge's credential (or written by a bug) and is left out, and reported.
MOST_REQUESTS_PER_HOUR = 100_000_000  # ~28,000 requests a second from one edge for one tenant and model
MOST_TOKENS_PER_REQUEST = 10_000_000  # prompt + completion: beyond any context window
MOST_NUSD_PER_TOKEN = 1_000_000  # $1,000 per million tokens


def usage_field(region: str, counter: str, model: str) -> str:
    return f"{region}|{counter}|{model}"


def minute_of(unix_s: float) -> int:
    return int(unix_s // 60)


def plausible(row: UsageRow) -> bool:
    """Whether an edge could have counted ``row`` (one tenant, model and region in one hour)."""
    tokens = row.prompt_tokens + row.completion_tokens
    return (
        row.requests <= MOST_REQUESTS_PER_HOUR
        and tokens <= row.requests * MOST_TOKENS_PER_REQUEST
        and row.spend_nusd <= tokens * MOST_NUSD_PER_TOKEN
        and row.errors <= row.requests  # an answer counts once, failed or not
    )


def decode_minute(raw: Mapping[str | bytes, str | bytes]) -> dict[str, UsageRow]:
    """One region's minute of traffic: model -> its counters (fields ``<counter>|<model>``)."""
    rows = decode_hour({f"-|{k.decode() if isinstance(k, bytes) else k}": v for k, v in raw.items()})
    return {model: row for (model, _), row in rows.items()}


def decode_hour(raw: Mapping[str | bytes, str | bytes]) -> dict[tuple[str, str], UsageRow]:
    """One hour's hash -> (model, region) -> its counters (fields that do not decode are left out, and so
    is a negative counter: edges only ever add, so it is forged — the edge's credential may HINCRBY)."""
    out: dict[tuple[str, str], UsageRow] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else k
        region, _, rest = name.partition("|")
        counter, _, model = rest.partition("|")
        if counter not in COUNTERS:
            continue
        try:
            n = int(v)
        except ValueError:
            continue
        if n < 0:
            continue
        row = out.setdefault((model, region), UsageRow())
        setattr(row, counter, getattr(row, counter) + n)
    return out


def merge_edges(
    per_edge: Mapping[str, Mapping[tuple[str, str], UsageRow]],
) -> tuple[dict[tuple[str, str], UsageRow], list[str]]:
    """The edges' rows for one hour summed per (model, region), and the edges whose rows no edge could have
    counted (left out: ``plausible``)."""
    total: dict[tuple[str, str], UsageRow] = {}
    forged: list[str] = []
    for edge, rows in per_edge.items():
        for at, row in rows.items():
            if not plausible(row):
                forged.append(edge)
                continue
            total.setdefault(at, UsageRow()).merge(row)
    return total, forged


def edges_to_read(named: Iterable[str], remembered: Iterable[str | bytes]) -> list[str | None]:
    """Whose usage and traffic hashes to read: every edge the topology names or the store remembers, and
    ``None`` for the hashes all edges shared before per-edge users."""
    seen = {*named, *(e.decode() if isinstance(e, bytes) else e for e in remembered)}
    return [None, *sorted(seen)]
