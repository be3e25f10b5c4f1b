"""Seed a benchmark's Redis (run as a script from the repository root): regions from a regions file, and
with --key-secret a tenant with limits and a spend budget far above any load and one key for it, then one
with the same limits and no budget and its key, printed on stdout (two lines)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.store import AuditEntry, StateStore
from controlplane.tenants import TenantStore
from fleet.redisconn import connect
from fleet.topology import load_topology


async def seed(regions_file: str, url: str, key_secret: str | None) -> None:
    client = connect(url)
    try:
        await StateStore(client).seed(load_topology(regions_file), now=time.time())
        if key_secret:
            tenants = TenantStore(client, secret=key_secret.encode())
            audit = AuditEntry("bench", "benchmark tenant", "create")
            fields = {
                "name": "bench",
                "limits": {"rpm": 10**8, "tpm": 10**10},
                "budget": {"usd": 1_000_000.0, "period": "month"},  # reserved and settled per request
            }
            existing = {t.name: t for t in await tenants.tenants()}  # seeded before: names are unique
            for extra in ({}, {"name": "bench-no-budget", "budget": None}):  # without: what a budget costs
                wanted = {**fields, **extra}
                tenant = existing.get(str(wanted["name"])) or await tenants.create(wanted, audit)
                _, key = await tenants.issue_key(tenant.id, audit)
                print(key)
    finally:
        await client.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("regions_file")
    ap.add_argument("redis_url")
    ap.add_argument("--key-secret", default=None)
    a = ap.parse_args()
    asyncio.run(seed(a.regions_file, a.redis_url, a.key_secret))
