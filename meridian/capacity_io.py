"""``meridian capacity``'s history (I/O): the traffic the edges recorded, from the store or a CSV, as the
samples ``meridian.capacity.plan`` takes."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from meridian.capacity import Sample


def read_csv(path: Path) -> list[Sample]:
    """A history CSV; a row that does not parse, or whose counts are not finite and non-negative, stops
    with its line number."""
    out = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                names = ("requests", "prompt_tokens", "completion_tokens")
                counts = [float(row[k]) for k in names]
                for k, v in zip(names, counts, strict=True):
                    if not (math.isfinite(v) and v >= 0):
                        raise ValueError(f"{k} must be a finite number >= 0, got {row[k]!r}")
                out.append(
                    Sample(
                        datetime.fromisoformat(row["minute"]).astimezone(UTC),
                        row["region"],
                        row["model"],
                        *counts,
                    )
                )
            except (KeyError, ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
    return out


def read_store(url: str, regions: Iterable[str], *, days: float, now: float) -> list[Sample]:
    """The traffic the edges recorded in the store (per region and minute, kept 35 days), last ``days``:
    every edge's hashes (the topology's and every edge the store remembers), and those of before per-edge
    users."""
    import redis

    from fleet.keys import KEY_EDGES, traffic_key
    from fleet.usage import UsageRow, decode_minute, edges_to_read, minute_of, plausible

    client = redis.Redis.from_url(url, decode_responses=True)
    regions = list(regions)
    last = minute_of(now)
    out = []
    try:
        remembered: set[str] = client.smembers(KEY_EDGES)  # type: ignore[assignment]
        edges = edges_to_read(regions, remembered)
        keys = [(r, m) for r in regions for m in range(last - int(days * 1440), last + 1)]
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            with client.pipeline(transaction=False) as pipe:
                for region, minute in chunk:
                    for edge in edges:
                        pipe.hgetall(traffic_key(edge, region, minute))
                raw = pipe.execute()
            for j, (region, minute) in enumerate(chunk):
                at = datetime.fromtimestamp(minute * 60, UTC)
                rows: dict[str, UsageRow] = {}
                for got in raw[j * len(edges) : (j + 1) * len(edges)]:
                    for model, row in decode_minute(got).items():
                        if plausible(row):  # what no edge could count was forged with its credential
                            rows.setdefault(model, UsageRow()).merge(row)
                for model, row in rows.items():
                    out.append(
                        Sample(at, region, model, row.requests, row.prompt_tokens, row.completion_tokens)
                    )
    finally:
        client.close()
    return out
