"""The replicated state never goes backwards and never loses operator intent: rollbacks, a primary that comes
back empty, partial and invalid state, a busy connection pool, and credentials kept out of logs and bodies —
each on real redis-server processes, edges and the admin API over loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import BlockingConnectionPool

from controlplane.store import StateStore, StoreBusy
from edge.routing.snapshot import SnapshotFeed
from fleet.acl import CONTROL_PLANE, Credentials, edge_user
from fleet.keys import CHANNEL_CHANGES, KEY_REGIONS, KEY_VERSION, observations_key
from fleet.redisconn import connect, redact, refusal
from fleet.state import Applied, next_epoch, went_back
from meridian.redisproc import RedisServer, free_port
from tests.fleet import Fleet, ServerFactory, edge_counts, start_fleet, wait_for
from tests.geodb import CLIENT_IP

LONDON = CLIENT_IP["london"]


async def served_region(s: aiohttp.ClientSession, fleet: Fleet, edge: str, ip: str) -> str:
    async with s.post(
        fleet.edge_url(edge) + "v1/chat/completions", json={}, headers={"X-Forwarded-For": ip}
    ) as r:
        await r.read()
        assert r.status == 200, r.status
        return r.headers["X-Meridian-Region"]


async def touch(primary: RedisServer, *commands: tuple[str, ...]) -> None:
    """Write to the store behind the control plane's back (a fault, a bad actor) and announce it."""
    assert primary.acl is not None
    r = aioredis.Redis(port=primary.port, username=CONTROL_PLANE, password=primary.acl.control_plane)
    try:
        for c in commands:
            await r.execute_command(*c)
        version = await r.incr(KEY_VERSION)
        await r.publish(CHANNEL_CHANGES, f'{{"version": {version}, "region": "*"}}')
    finally:
        await r.aclose()


def refused(fleet: Fleet, edge: str, reason: str) -> float:
    metrics = fleet.edges[edge].edge.metrics
    return (
        metrics.registry.get_sample_value("meridian_edge_snapshots_refused_total", {"reason": reason}) or 0.0
    )


@pytest.fixture
async def two_regions(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, regions=("eu-west-1", "us-east-1"), edges=("eu-west-1",)
    )
    try:
        yield f
    finally:
        await f.close()


async def test_a_replica_restarted_from_an_old_copy_never_rolls_the_edge_back(two_regions: Fleet) -> None:
    f = two_regions
    edge = f.edges["eu-west-1"].edge
    replica = f.replicas["eu-west-1"]
    replica.command("CONFIG", "SET", "appendonly", "no")  # its copy on disk stays at today's version
    status, body = await f.admin("PATCH", "/v1/regions/eu-west-1", body={"drained": True, "reason": "test"})
    assert status == 200, body

    async def drained() -> bool:
        cur = edge.feed.current
        return cur is not None and cur.regions["eu-west-1"].drained

    await wait_for(drained, timeout=5, what="the edge to see the drain")
    assert edge.feed.current is not None
    at_drain = edge.feed.current.version
    f.primary.stop()
    replica.kill()
    replica.start()  # same port, same --dir: it serves the old copy (its primary is gone)

    async def refused_older() -> bool:
        return refused(f, "eu-west-1", "older") >= 1

    await wait_for(refused_older, timeout=10, what="the edge to read the rolled-back replica and refuse it")
    assert edge.feed.current is not None and edge.feed.current.version == at_drain
    assert edge.feed.current.regions["eu-west-1"].drained
    assert edge.feed.refusal is not None and edge.feed.refusal.startswith("older")
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            assert await served_region(s, f, "eu-west-1", LONDON) == "us-east-1"


async def test_a_primary_that_comes_back_empty_is_restored_and_edges_never_regress(fleet: Fleet) -> None:
    assert (await fleet.admin("PATCH", "/v1/regions/eu-west-1", body={"drained": True, "reason": "a"}))[
        0
    ] == 200
    assert (await fleet.admin("PATCH", "/v1/regions/us-east-1", body={"weight": 50, "reason": "b"}))[0] == 200
    edge = fleet.edges["eu-west-1"].edge

    async def edge_has_both() -> bool:
        cur = edge.feed.current
        return cur is not None and cur.regions["eu-west-1"].drained and cur.regions["us-east-1"].weight == 50

    await wait_for(edge_has_both, timeout=5, what="the edge to take both changes")
    seen: dict[str, list[int]] = {name: [] for name in fleet.edges}
    served: list[str] = []
    stop = asyncio.Event()

    async def watch() -> None:  # what every edge routes on, and where London goes, all through the fault
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                for name, e in fleet.edges.items():
                    if e.edge.feed.current is not None:
                        seen[name].append(e.edge.feed.current.version)
                served.append(await served_region(s, fleet, "eu-west-1", LONDON))
                await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        fleet.primary.kill()
        shutil.rmtree(fleet.primary.workdir / "appendonlydir", ignore_errors=True)  # it comes back empty
        fleet.primary.start()
        started = time.monotonic()

        async def restored() -> bool:
            status, body = await fleet.admin("GET", "/v1/regions")
            if status != 200:
                return False
            by = {r["name"]: r for r in body["regions"]}
            return len(by) == 4 and by["eu-west-1"].get("drained") is True and by["us-east-1"]["weight"] == 50

        await wait_for(restored, timeout=15, interval=0.1, what="the control plane to restore the store")
        took = time.monotonic() - started
        await wait_for(edge_has_both, timeout=5, what="the edge to follow the restored store")
    finally:
        stop.set()
        await watcher
    print(f"\nprimary back empty: dials, drains and audit restored {took:.1f} s after it restarted")
    _, audit = await fleet.admin("GET", "/v1/audit")
    actions = [(e["action"], e["reason"]) for e in audit["entries"]]
    assert actions[0][0] == "restore"
    assert {r for _, r in actions} >= {"a", "b"}  # the operators' history is back too
    for name, versions in seen.items():  # no edge ever went back to an older state
        assert versions == sorted(versions), name
    assert fleet.admin_app.state.store.restores == 1  # it did come back empty, and was put back once
    assert "eu-west-1" not in served  # the drain held through the whole fault


async def test_edges_keep_a_complete_view_when_regions_vanish_and_the_control_plane_puts_them_back(
    fleet: Fleet,
) -> None:
    edge = fleet.edges["eu-west-1"].edge
    await touch(fleet.primary, ("HDEL", KEY_REGIONS, "us-east-1", "us-west-2", "ap-southeast-1"))

    async def refused_incomplete() -> bool:
        return refused(fleet, "eu-west-1", "incomplete") >= 1

    await wait_for(refused_incomplete, timeout=5, what="the edge to refuse the partial state")
    assert edge.feed.current is not None and len(edge.feed.current.regions) == 4
    async with (
        aiohttp.ClientSession() as s,
        s.get(fleet.edge_url("eu-west-1") + "_meridian/route", params={"ip": LONDON}) as r,
    ):
        assert len((await r.json())["order"]) == 4  # failover targets are still there

    async def back() -> bool:
        status, body = await fleet.admin("GET", "/v1/regions")
        return status == 200 and len(body["regions"]) == 4

    await wait_for(back, timeout=5, what="the control plane to put the regions back")


async def test_an_invalid_record_is_quarantined_reported_and_repaired_through_the_api(fleet: Fleet) -> None:
    edge = fleet.edges["eu-west-1"].edge
    await touch(fleet.primary, ("HSET", KEY_REGIONS, "eu-west-1", '{"name": "eu-west-1", "weight": 900}'))

    async def quarantined() -> bool:
        cur = edge.feed.current
        return cur is not None and cur.quarantined == {"eu-west-1"}

    await wait_for(quarantined, timeout=5, what="the edge to quarantine the bad record")
    status, body = await fleet.admin("GET", "/v1/regions")
    assert status == 200, body
    bad = next(r for r in body["regions"] if r["name"] == "eu-west-1")
    assert "weight" in bad["invalid"] and bad["repair"] == "PATCH /v1/regions/eu-west-1"
    status, body = await fleet.admin("GET", "/v1/regions/eu-west-1")
    assert status == 409 and "PATCH" in body["detail"]
    # the other regions keep flowing to the edges
    assert (await fleet.admin("PATCH", "/v1/regions/us-east-1", body={"weight": 40, "reason": "c"}))[0] == 200

    async def other_update() -> bool:
        cur = edge.feed.current
        return cur is not None and cur.regions["us-east-1"].weight == 40

    await wait_for(other_update, timeout=5, what="an update of another region to reach the edge")
    status, body = await fleet.admin(
        "PATCH", "/v1/regions/eu-west-1", body={"weight": 100, "reason": "repair"}
    )
    assert status == 200, body

    async def repaired() -> bool:
        cur = edge.feed.current
        return cur is not None and not cur.quarantined

    await wait_for(repaired, timeout=5, what="the repaired record to reach the edge")
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url("eu-west-1") + "metrics") as r:
        assert 'meridian_edge_snapshots_refused_total{reason="invalid"}' in await r.text()


async def test_the_prober_never_repairs_an_invalid_record_behind_the_operators_back(fleet: Fleet) -> None:
    """An invalid record that says "drained" stays as it is through the prober's rounds (repairing it from
    the defaults would un-drain the region, unaudited); only an operator's PATCH, audited, replaces it."""
    bad = '{"name": "eu-west-1", "weight": 900, "drained": true}'
    await touch(fleet.primary, ("HSET", KEY_REGIONS, "eu-west-1", bad))
    prober = fleet.admin_app.state.prober

    def stored() -> str:
        r = fleet.primary.client(decode=True)
        try:
            return str(r.hget(KEY_REGIONS, "eu-west-1"))
        finally:
            r.close()

    async def prober_tried() -> bool:  # it left the record alone, or (before) rewrote it from defaults
        return "eu-west-1" in prober.write_trouble or stored() != bad

    await wait_for(prober_tried, timeout=10, what="the prober's write to eu-west-1")
    assert stored() == bad
    _, audit = await fleet.admin("GET", "/v1/audit?limit=20")
    assert not [e for e in audit["entries"] if e["region"] == "eu-west-1"], audit


async def test_a_full_connection_pool_is_busy_not_an_outage(tmp_path: Path) -> None:
    server = RedisServer(port=free_port(), workdir=tmp_path / "r").start()
    server.wait_ready()
    pool = BlockingConnectionPool.from_url(server.url, max_connections=1, timeout=0.2)
    client = aioredis.Redis(connection_pool=pool)
    store = StateStore(client)
    try:
        holder = asyncio.ensure_future(client.blpop(["nothing"], timeout=2))  # the only connection, held
        await asyncio.sleep(0.05)
        with pytest.raises(StoreBusy):
            await store.all()
        await holder
    finally:
        await client.aclose()
        server.stop()


async def test_a_hundred_and_fifty_concurrent_admin_writes_all_land(fleet: Fleet) -> None:
    async def write(i: int) -> int:
        status, _ = await fleet.admin(
            "PATCH", "/v1/regions/us-west-2", body={"weight": i % 100 + 1, "reason": f"burst {i}"}
        )
        return status

    statuses = await asyncio.gather(*(write(i) for i in range(150)))
    assert statuses.count(200) == 150, sorted(set(statuses))


async def test_credentials_never_reach_logs_or_bodies(
    tmp_path: Path, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-pw-41"
    server = RedisServer(port=free_port(), workdir=tmp_path / "auth", extra=("--requirepass", secret)).start()
    url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
    assert secret not in redact(url) and "***@" in redact(url)
    feed = SnapshotFeed(url=url, resync_interval_s=0.2, topology=("eu-west-1",), connect=connect)
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(feed.run())
    try:

        async def connected() -> bool:
            return feed.connected

        await wait_for(connected, timeout=10, what="the feed to authenticate")
        server.kill()

        async def lost() -> bool:
            return not feed.connected

        await wait_for(lost, timeout=5, what="the feed to notice")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    text = caplog.text
    assert "lost the state store at redis://***@127.0.0.1" in text and secret not in text
    # the admin API's unauthenticated readiness and its 503s name no address
    fleet.primary.stop()
    async with aiohttp.ClientSession() as s, s.get(fleet.admin_url + "/readyz") as r:
        body = await r.text()
    assert r.status == 503 and "127.0.0.1" not in body and str(fleet.primary.port) not in body
    status, patch = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 1, "reason": "x"})
    assert status == 503 and "127.0.0.1" not in str(patch) and str(fleet.primary.port) not in str(patch)


def test_a_sentinel_url_keeps_its_password() -> None:
    client = connect(
        "redis+sentinel://:data-pw@127.0.0.1:26379,127.0.0.1:26380/mymaster?sentinel_password=s-pw"
    )
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "data-pw"
    sentinel = client.connection_pool.sentinel_manager  # type: ignore[attr-defined]
    assert [s.connection_pool.connection_kwargs.get("password") for s in sentinel.sentinels] == [
        "s-pw",
        "s-pw",
    ]


async def test_an_edges_credentials_cannot_write_routing_state(tmp_path: Path) -> None:
    """The ACL users every redis-server of a fleet loads (fleet.acl): an edge reads and follows the state
    and appends observations; it cannot write a region or announce a change. The default user is off."""
    acl = Credentials(control_plane="cp-pw-1", replication="repl-pw-3", edges={"eu-west-1": "edge-pw-2"})
    primary = RedisServer(port=free_port(), workdir=tmp_path / "p", acl=acl).start()
    primary.wait_ready()
    replica = RedisServer(port=free_port(), workdir=tmp_path / "r", replicaof=primary.port, acl=acl).start()
    replica.wait_ready()  # it replicates with the replication user
    cp = connect(primary.url_for(CONTROL_PLANE))
    edge_on_primary = connect(primary.url_for(edge_user("eu-west-1")))
    edge_on_replica = connect(replica.url_for(edge_user("eu-west-1")))
    anonymous = aioredis.Redis(port=primary.port)
    try:
        await cp.hset(KEY_REGIONS, "eu-west-1", '{"name": "eu-west-1"}')
        await cp.incr(KEY_VERSION)
        for attempt in (
            edge_on_primary.hset(KEY_REGIONS, "eu-west-1", '{"name": "eu-west-1", "drained": true}'),
            edge_on_primary.publish(CHANNEL_CHANGES, "{}"),
            edge_on_primary.set(KEY_VERSION, 99),
            edge_on_primary.xadd("meridian:audit", {"actor": "edge"}),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                await attempt
        assert await edge_on_primary.xadd(observations_key("eu-west-1"), {"requests": "1"})

        async def replicated() -> bool:
            return await edge_on_replica.hget(KEY_REGIONS, "eu-west-1") is not None

        await wait_for(replicated, timeout=5, what="the replica to follow the primary")
        pubsub = edge_on_replica.pubsub()
        await pubsub.subscribe(CHANNEL_CHANGES)  # the change feed is the edge's to follow
        await pubsub.aclose()
        with pytest.raises(redis.exceptions.AuthenticationError):
            await anonymous.ping()
    finally:
        for c in (cp, edge_on_primary, edge_on_replica, anonymous):
            await c.aclose()
        replica.stop()
        primary.stop()


@pytest.fixture
async def keyed(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, regions=("eu-west-1", "us-east-1"), auth=True)
    try:
        yield f
    finally:
        await f.close()


async def test_tenants_and_keys_survive_a_primary_that_comes_back_empty(keyed: Fleet) -> None:
    fleet = keyed
    tenant, key = await fleet.tenant_key({"rpm": 100_000}, name="survivor")
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:  # the key in use on every edge through the fault
        headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": LONDON}
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                for name in fleet.edges:
                    async with s.post(
                        fleet.edge_url(name) + "v1/chat/completions", json={}, headers=headers
                    ) as r:
                        await r.read()
                        statuses.append(r.status)
                await asyncio.sleep(0.02)

    running = asyncio.create_task(client())
    try:
        fleet.primary.kill()
        shutil.rmtree(fleet.primary.workdir / "appendonlydir", ignore_errors=True)  # it comes back empty
        fleet.primary.start()

        async def restored() -> bool:
            status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}/keys")
            return status == 200 and len(body["keys"]) == 1

        await wait_for(
            restored, timeout=15, interval=0.1, what="the control plane to restore tenants and keys"
        )
        await asyncio.sleep(0)
    finally:
        stop.set()
        await running
    assert 401 not in statuses and statuses.count(200) > 10  # no edge forgot the key, even while it was gone
    _, second = await fleet.admin("POST", f"/v1/tenants/{tenant}/keys")  # the next change reaches every edge

    async def taken() -> bool:
        return all(
            e.edge.tenants is not None and e.edge.tenants.resolve(second["key"]) for e in fleet.edges.values()
        )

    await wait_for(taken, timeout=3, what="every edge to take a key issued after the restore")


def test_the_store_went_back_when_an_edge_applied_a_newer_state_or_key_set() -> None:
    """The keeper's decision (pure): an edge's snapshot or key set newer than the store's position names
    it; a report at or behind the store, or of the previous epoch at any version, does not."""
    at = 1.0
    behind = Applied((5, 10), at, (5, 3))
    assert went_back((5, 10), (5, 3), {"eu-west-1": behind}) is None
    assert went_back((6, 1), (6, 1), {"eu-west-1": Applied((5, 900), at, (5, 90))}) is None
    assert went_back((5, 9), (5, 3), {"eu-west-1": behind}) == (
        "eu-west-1",
        "its snapshot at epoch/version 5/10",
    )
    assert went_back((5, 10), (5, 2), {"us-east-1": behind}) == (
        "us-east-1",
        "its key set at epoch/version 5/3",
    )
    assert went_back((5, 10), (5, 2), {"us-east-1": Applied((5, 10), at)}) is None  # keys off there


def test_a_new_epoch_is_newer_than_every_reported_one_whatever_this_clock_says() -> None:
    reports = {"a": Applied((2_000_000, 4), 1.0, (2_000_001, 2)), "b": Applied((7, 1), 1.0)}
    assert next_epoch(1_000.0, {}) == 1_000_000
    assert next_epoch(1_000.0, reports) == 2_000_002  # a control plane whose clock is behind
    assert next_epoch(1_000.0, {}, after=5_000_000) == 5_000_001
    assert next_epoch(9_000.0, reports) == 9_000_000


def test_an_applied_report_reads_back_what_the_edge_wrote_and_refuses_a_torn_one() -> None:
    report = Applied((3, 41), 12.345, (3, 7), "http://127.0.0.1:9/")
    written = {k.encode(): str(v).encode() for k, v in report.fields().items()}
    assert Applied.parse(written) == report
    assert Applied.parse({b"epoch": b"3", b"version": b"41", b"at": b"12345"}) == Applied((3, 41), 12.345)
    assert Applied.parse({}) is None
    assert Applied.parse({"version": "x", "at": "1"}) is None
    reported = dataclasses.replace(report, reported=100.0)
    assert Applied.parse({k: str(v) for k, v in reported.fields().items()}) == reported
    assert not reported.silent(105.0) and reported.silent(111.0) and not report.silent(1e9)


async def test_a_primary_out_of_memory_answers_a_clear_503_and_edges_keep_serving(
    keyed: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped store never evicts (Terraform's `maxmemory-policy noeviction`): full, it refuses every
    write, and Redis 7 every command inside MULTI. The admin API answered 500 "internal error" to each
    write and to `GET /v1/regions`, and the keeper logged a traceback every 0.5 s. Now: 503 naming the cause
    with `Retry-After`, the edges serve keyed requests meanwhile (limits on their own share), and writes land
    once there is memory again."""
    fleet = keyed
    caplog.set_level(logging.WARNING, logger="meridian.prober")

    def scraper_said(what: str) -> list[str]:
        return [m for r in caplog.records if r.name == "meridian.prober" and what in (m := r.getMessage())]

    tenant, key = await fleet.tenant_key({"rpm": 100_000}, name="while full")
    r = fleet.primary.client()
    r.config_set("maxmemory", "1")
    r.close()
    try:
        for method, path, body in (
            ("PATCH", "/v1/regions/eu-west-1", {"weight": 50, "reason": "full"}),
            ("POST", "/v1/tenants", {"name": "while full 2", "limits": {}}),
            ("POST", f"/v1/tenants/{tenant}/keys", None),
            ("GET", "/v1/regions", None),
        ):
            status, answer = await fleet.admin(method, path, body=body)
            assert status == 503 and "refuses writes: it is out of memory" in answer["detail"], (path, answer)
        status, answer = await fleet.admin("GET", "/v1/store")  # read without MULTI: it answers
        assert status == 200 and {e["edge"] for e in answer["edges"]} == {"eu-west-1", "us-east-1"}, answer
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.post(
                    fleet.edge_url("eu-west-1") + "v1/chat/completions",
                    json={"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": LONDON},
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        async def scraper_failing() -> bool:  # it writes the engines' signals every round (0.5 s)
            return bool(scraper_said("scraper: store unavailable"))

        await wait_for(scraper_failing, timeout=5, what="the scraper to find the store full")
        metrics = fleet.edges["eu-west-1"].make_url("/metrics")
        refused = (await edge_counts(metrics, "limits_primary_failures", "kind")).get("refused", 0)

        async def rounds_later() -> bool:  # registrations refused once a second: several scraper rounds
            now = (await edge_counts(metrics, "limits_primary_failures", "kind")).get("refused", 0)
            return bool(now >= refused + 3)

        await wait_for(rounds_later, timeout=10, what="three more refused registrations")
    finally:
        r = fleet.primary.client()
        r.config_set("maxmemory", "0")
        r.close()

    async def writes_land() -> bool:
        status, _ = await fleet.admin(
            "PATCH", "/v1/regions/eu-west-1", body={"weight": 40, "reason": "freed"}
        )
        return status == 200

    await wait_for(writes_land, timeout=5, what="a write to land once the primary has memory")
    assert not [rec for rec in caplog.records if rec.exc_info], [rec.getMessage() for rec in caplog.records]

    async def scraper_says_it_is_back() -> bool:  # its signals written once more
        return bool(scraper_said("scraper: store available again"))

    await wait_for(scraper_says_it_is_back, timeout=5, what="the scraper to log the store back")
    assert len(scraper_said("scraper: store unavailable")) == 1, scraper_said("scraper")  # not every round


def test_a_server_that_refuses_writes_is_told_from_other_errors() -> None:
    """What turns a store error into a 503 naming the cause (``fleet.redisconn.refusal``), as redis-py
    raises it alone and from a pipeline."""
    full = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert (refusal(full) or "").startswith("out of memory")
    disk = redis.exceptions.ResponseError(
        "Command # 1 (SET k v) of pipeline caused error: MISCONF Errors writing to the AOF file: No space"
    )
    assert (refusal(disk) or "").startswith("unable to persist")
    assert refusal(redis.exceptions.NoPermissionError("this user has no permissions")) is None
    assert refusal(redis.exceptions.ResponseError("WRONGTYPE Operation against a key")) is None


async def test_the_store_status_shows_an_edge_behind_while_its_replica_is_frozen_then_current(
    keyed: Fleet,
) -> None:
    """`GET /v1/store` (`meridian ctl store`): the store's position and where each edge stands, from what
    the edges report every observation interval. A dial written while eu-west-1's replica is frozen leaves
    that edge behind and the other current; once the replica thaws, both are current — with their key sets."""
    fleet = keyed

    async def standings() -> dict[str, str]:
        status, body = await fleet.admin("GET", "/v1/store")
        assert status == 200, body
        return {e["edge"]: e["standing"] for e in body["edges"]}

    async def all_current() -> bool:
        return await standings() == {"eu-west-1": "current", "us-east-1": "current"}

    await wait_for(all_current, timeout=5, what="both edges current")
    replica = fleet.replicas["eu-west-1"]
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        status, _ = await fleet.admin("PATCH", "/v1/regions/us-east-1", body={"weight": 30, "reason": "x"})
        assert status == 200

        async def eu_behind() -> bool:
            return await standings() == {"eu-west-1": "behind", "us-east-1": "current"}

        await wait_for(eu_behind, timeout=5, what="eu-west-1 behind, us-east-1 current")
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    await wait_for(all_current, timeout=10, what="both edges current again")
    _, body = await fleet.admin("GET", "/v1/store")
    assert not any(e["silent"] for e in body["edges"]) and all(
        abs(e["reported_at"] - time.time()) < 5 for e in body["edges"]
    ), body
    assert body["unreported"] == [] and all(
        e["snapshot"] == [body["epoch"], body["version"]]
        and e["keys"] == [body["epoch"], body["keys_version"]]
        for e in body["edges"]
    ), body
