"""Redis primary loss with real redis-sentinel processes: admin writes get 503 while there is no primary,
work again after Sentinel promotes a replica, and edges on the replicas see them."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from meridian.redisproc import RedisServer
from tests.fleet import ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP
from tests.load import Load


async def test_sentinel_failover_restores_admin_writes(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, regions=("eu-west-1", "us-east-1", "us-west-2"), sentinels=3
    )
    try:

        async def sentinels_see_replicas() -> bool:
            out = _info(f.sentinels[0].port) if f.sentinels[0].proc is not None else {}
            return int(out.get("num-slaves", 0)) >= 3

        await wait_for(sentinels_see_replicas, timeout=15, what="sentinels to discover the replicas")
        london = {"london": (f.edge_url("us-east-1"), CLIENT_IP["london"])}
        async with Load(london, per_place=2) as load:
            await wait_for(lambda: _true(len(load.samples) > 50), timeout=10, what="load")
            killed = time.monotonic()
            f.primary.kill()
            status, body = await f.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 0, "reason": "x"})
            assert status == 503 and "primary unavailable" in body["detail"]

            async def writable() -> bool:
                s, _ = await f.admin(
                    "PATCH", "/v1/regions/eu-west-1", body={"weight": 0, "reason": "after sentinel failover"}
                )
                return s == 200

            await wait_for(writable, timeout=30, interval=0.2, what="admin writes after Sentinel promotion")
            took = time.monotonic() - killed

            async def replicas_follow_the_new_primary() -> bool:
                return all(_linked(rs) for rs in f.replicas.values())

            # Sentinel re-points the other replicas one at a time (parallel-syncs 1), each with a full sync
            await wait_for(
                replicas_follow_the_new_primary,
                timeout=30,
                interval=0.2,
                what="every replica to follow the promoted primary",
            )
            resynced = time.monotonic() - killed
            async with aiohttp.ClientSession() as s:

                async def moved() -> bool:
                    for edge in f.edges:
                        async with s.get(
                            f.edge_url(edge) + "_meridian/route", params={"ip": CLIENT_IP["london"]}
                        ) as r:
                            if (await r.json())["choice"] == "eu-west-1":
                                return False
                    return True

                await wait_for(moved, timeout=10, what="every edge to see the write made after failover")
            print(
                f"\nsentinel failover: admin writes back {took:.1f} s after the primary was killed; every "
                f"replica in sync with the new primary after {resynced:.1f} s"
            )
        assert load.errors() == []
    finally:
        await f.close()


def _linked(server: RedisServer) -> bool:
    """A replica linked to a live primary, or the promoted primary itself."""
    import redis

    r = server.client(decode=True)
    try:
        info = r.info("replication")
    except redis.RedisError:
        return False
    finally:
        r.close()
    return info.get("role") == "master" or info.get("master_link_status") == "up"


def _info(port: int) -> dict[str, str]:
    import redis

    r = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    try:
        masters = r.execute_command("SENTINEL", "MASTERS")
    except redis.RedisError:
        return {}
    finally:
        r.close()
    if not masters:
        return {}
    m = masters[0]
    return dict(zip(m[::2], m[1::2], strict=False)) if isinstance(m, list) else dict(m)


async def _true(value: bool) -> bool:
    return value
