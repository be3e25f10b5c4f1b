"""Durability as shipped: the fleet's Redis (the demo's configuration: AOF on, the shipped ACL file) killed
with SIGKILL right after a burst of acknowledged writes — tenants, keys, a revocation, the audit, usage
counters (HINCRBY batches in MULTI/EXEC) and limit state (script effects, which Redis 7 logs as
MULTI/EXEC) — has every one of them after it restarts from its AOF. Twenty rounds in a row."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.server.app import Edge
from edge.server.main import serve as serve_edge
from fleet.keys import KEY_API_KEYS, KEY_AUDIT, KEY_TENANTS
from meridian.redisproc import free_port
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ROUNDS = 20


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",), sim_kwargs={"ttft_ms": 1.0}
    )
    try:
        yield f
    finally:
        await f.close()


def stored(fleet: Fleet) -> dict[str, Any]:
    """What the primary holds of the writes this test makes (read as the tests' own ops user)."""
    r = fleet.primary.client(decode=True)
    try:
        usage = {k: r.hgetall(k) for k in r.scan_iter("meridian:usage:*")}
        limits = {k: r.hgetall(k) for k in r.scan_iter("meridian:limits:t-*")}
        return {
            "tenants": r.hgetall(KEY_TENANTS),
            "keys": r.hgetall(KEY_API_KEYS),
            "audit": [entry_id for entry_id, _ in r.xrange(KEY_AUDIT) or []],
            "usage": usage,
            "limits": limits,
        }
    finally:
        r.close()


async def burst(fleet: Fleet, s: aiohttp.ClientSession, n: int) -> None:
    """Round ``n``'s writes, each acknowledged: a tenant, two keys (one revoked), a change, three requests
    (usage and limit state), then the edge's usage batch taken by the primary."""
    tenant, key = await fleet.tenant_key({"rpm": 600}, name=f"round {n}")
    _, other = await fleet.admin("POST", f"/v1/tenants/{tenant}/keys")
    status, _ = await fleet.admin("DELETE", f"/v1/tenants/{tenant}/keys/{other['id']}")
    assert status == 204
    status, _ = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"limits": {"rpm": 5}})
    assert status == 200
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    for _ in range(3):
        async with s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=CHAT, headers=hdrs) as r:
            assert r.status in (200, 429)

    async def usage_taken() -> bool:
        got = await asyncio.to_thread(stored, fleet)
        return any(k.startswith(f"meridian:usage:eu-west-1:{tenant}:") for k in got["usage"])

    await wait_for(usage_taken, timeout=5, what="the edge's usage batch on the primary")


def lost(before: dict[str, Any], after: dict[str, Any]) -> dict[str, object]:
    """What ``before`` had that ``after`` lacks (limit state only by key: an edge may give a lease back
    in between; everything else by value)."""
    out: dict[str, object] = {}
    for what, was in before.items():
        now = after[what]
        if isinstance(was, list):
            missing: object = [x for x in was if x not in now]
        elif what == "limits":
            missing = sorted(set(was) - set(now))
        else:
            missing = {k: v for k, v in was.items() if now.get(k) != v}
        if missing:
            out[what] = missing
    return out


@pytest.mark.slow
async def test_every_acknowledged_write_survives_a_sigkill_of_the_primary(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s:
        for n in range(ROUNDS):
            await burst(fleet, s, n)
            before = await asyncio.to_thread(stored, fleet)
            fleet.primary.kill()  # SIGKILL: no shutdown, no final save
            fleet.primary.start()
            await asyncio.to_thread(fleet.primary.wait_ready)
            after = await asyncio.to_thread(stored, fleet)
            assert not lost(before, after), (n, lost(before, after))
    assert len(after["tenants"]) == ROUNDS


async def test_the_default_user_that_replays_the_aof_is_no_one_elses(fleet: Fleet) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet.primary.port)
    try:
        writer.write(b'PING\r\nAUTH default anything\r\nAUTH default ""\r\n')
        answers = [await reader.readline() for _ in range(3)]
    finally:
        writer.close()
    assert answers[0].startswith(b"-NOAUTH"), answers  # no connection is the default user
    assert all(a.startswith(b"-WRONGPASS") for a in answers[1:]), answers  # nor can become it


@pytest.mark.slow
async def test_a_primary_restarted_empty_gets_back_every_acknowledged_tenant_write(fleet: Fleet) -> None:
    """Revoke K1, issue K2 and cut the limit within milliseconds, then lose the primary's data: the control
    plane's copy (updated before each answer) puts back exactly that — K1 stays revoked at every edge, K2
    works, the limit stays cut, the audit keeps the three entries. Twenty rounds."""
    for n in range(ROUNDS):
        await revocation_round(fleet, n)


async def revocation_round(fleet: Fleet, n: int) -> None:
    store = fleet.admin_app.state.store
    tenant, k1 = await fleet.tenant_key({"rpm": 600}, name=f"revoked {n}")
    _, keys = await fleet.admin("GET", f"/v1/tenants/{tenant}/keys")
    status, _ = await fleet.admin("DELETE", f"/v1/tenants/{tenant}/keys/{keys['keys'][0]['id']}")
    assert status == 204
    status, issued = await fleet.admin("POST", f"/v1/tenants/{tenant}/keys")
    assert status == 201
    status, _ = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"limits": {"rpm": 5}})
    assert status == 200
    restores = store.restores
    fleet.primary.kill()
    shutil.rmtree(fleet.primary.workdir / "appendonlydir")  # it comes back empty
    fleet.primary.start()
    await asyncio.to_thread(fleet.primary.wait_ready)

    async def restored() -> bool:
        return bool(store.restores > restores)

    await wait_for(restored, timeout=10, what="the control plane to put its copy back")
    _, text = await fleet.admin("GET", "/metrics")  # what MeridianStateStoreRestored tickets on
    counted = [
        s.value
        for m in text_string_to_metric_families(text)
        for s in m.samples
        if (s.name, s.labels) == ("meridian_store_events_total", {"event": "restore"})
    ]
    assert counted == [float(store.restores)], counted
    status, listed = await fleet.admin("GET", f"/v1/tenants/{tenant}/keys")
    assert [k["id"] for k in listed["keys"]] == [issued["id"]], listed  # K1 stays revoked
    status, body = await fleet.admin("GET", f"/v1/tenants/{tenant}")
    assert body["limits"]["rpm"] == 5, body
    _, audit = await fleet.admin("GET", "/v1/audit?limit=20")
    mine = [e["action"].split(" k-")[0] for e in audit["entries"] if e["region"] == f"tenant:{tenant}"]
    assert {"revoke key", "issue key", "update tenant: limits"} <= set(mine), mine
    edge = fleet.edge_url("eu-west-1")

    async def keys_as_restored() -> bool:
        return await _status(edge, k1) == 401 and await _status(edge, issued["key"]) in (200, 429)

    await wait_for(keys_as_restored, timeout=5, what="K1 refused and K2 served after the restore")


async def test_an_edge_that_cannot_confirm_keys_stops_admitting_and_says_so(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The edge's replica and the primary frozen (SIGSTOP): past MERIDIAN_TENANTS_MAX_AGE_S the edge
    answers 503 api_keys_stale and /readyz is 503; thawed, it admits the key again and is ready."""
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        regions=("eu-west-1", "us-east-1"),
        sim_kwargs={"ttft_ms": 1.0},
        edge_overrides={"tenants_max_age_s": 1.0},
    )
    frozen = [f.replicas["eu-west-1"].proc, f.primary.proc]
    try:
        _, key = await f.tenant_key()
        url = f.edge_url("eu-west-1")
        hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
        async with aiohttp.ClientSession() as s:

            async def ask() -> tuple[int, dict[str, object]]:
                async with s.post(url + "v1/chat/completions", json=CHAT, headers=hdrs) as r:
                    return r.status, await r.json()

            assert (await ask())[0] == 200
            for proc in frozen:
                assert proc is not None
                os.kill(proc.pid, signal.SIGSTOP)
            try:

                async def closed() -> bool:
                    status, body = await ask()
                    return status == 503 and body["error"]["code"] == "api_keys_stale"  # type: ignore[index]

                await wait_for(closed, timeout=5, interval=0.1, what="the edge to stop admitting")
                async with s.get(f.edges["eu-west-1"].make_url("/readyz")) as r:
                    ready = await r.json()
                    assert r.status == 503 and ready["api_keys_stale_s"] >= 1.0, ready
            finally:
                for proc in frozen:
                    assert proc is not None
                    os.kill(proc.pid, signal.SIGCONT)

            async def admitted() -> bool:
                return (await ask())[0] == 200

            await wait_for(admitted, timeout=10, interval=0.1, what="the key admitted again after the thaw")
    finally:
        await f.close()


async def test_an_edge_started_before_it_could_load_keys_says_retry_not_wrong_key(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """Found by the fault campaign (seed 11): an edge restarted while its stores were slow answered a valid
    key 401 "incorrect API key" until its key set loaded. Until then it answers 503 api_keys_loading (a
    client retries, or another edge serves), and the key works once the set is in."""
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",), sim_kwargs={"ttft_ms": 1.0}
    )
    frozen = [f.replicas["eu-west-1"].proc, f.primary.proc]
    late = None
    try:
        _, key = await f.tenant_key()
        for proc in frozen:
            assert proc is not None
            os.kill(proc.pid, signal.SIGSTOP)
        first = f.edges["eu-west-1"].edge
        late = Edge(first.settings, topology=first.topology)  # a restarted edge: its stores not answering
        runner = await serve_edge(late, "127.0.0.1", 0, shutdown_timeout=2.0)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
        hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=CHAT, headers=hdrs) as r:
                body = await r.json()
                assert r.status == 503 and body["error"]["code"] == "api_keys_loading", body
                assert r.headers["Retry-After"] == "1"
            for proc in frozen:
                assert proc is not None
                os.kill(proc.pid, signal.SIGCONT)

            async def served() -> bool:
                async with s.post(url, json=CHAT, headers=hdrs) as r:
                    return r.status == 200

            await wait_for(served, timeout=10, interval=0.1, what="the key served once the set loaded")
        await runner.cleanup()
    finally:
        for proc in frozen:
            if proc is not None:
                os.kill(proc.pid, signal.SIGCONT)
        await f.close()


async def test_an_edge_started_while_its_replica_is_frozen_takes_its_first_snapshot_from_the_primary(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """Found by the fault campaign (seed 101): an edge restarted while its Redis replica was paused routed on
    regions.yaml alone — every replica "up", every dial 100 — and sent requests to replicas the autoscaler
    had switched off (503s). With no snapshot yet and a replica slow to answer, it now takes its first
    snapshot from the primary within half a second, and holds a request that comes first until it has one:
    the first London request after the restart already obeys eu-west-1's dial of 0."""
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, regions=("eu-west-1", "us-east-1"), sim_kwargs={"ttft_ms": 1.0}
    )
    replica = f.replicas["eu-west-1"].proc
    try:
        status, _ = await f.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 0, "reason": "in force"})
        assert status == 200
        assert replica is not None
        os.kill(replica.pid, signal.SIGSTOP)
        first = f.edges["eu-west-1"].edge
        late = Edge(first.settings, topology=first.topology)  # a restarted edge, its replica frozen
        runner = await serve_edge(late, "127.0.0.1", 0, shutdown_timeout=2.0)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, json=CHAT, headers={"X-Forwarded-For": CLIENT_IP["london"]}) as r,
        ):
            await r.read()
            assert r.status == 200 and r.headers["X-Meridian-Region"] == "us-east-1", dict(r.headers)
        assert late.feed.current is not None and late.feed.current.regions["eu-west-1"].weight == 0
        await runner.cleanup()
    finally:
        if replica is not None:
            os.kill(replica.pid, signal.SIGCONT)
        await f.close()


async def test_a_replica_that_lost_its_primary_cannot_keep_a_revoked_key_alive(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """The edge's replica cut from the primary (pointed at a dead port: it keeps answering with its old
    data) while a key is revoked: the edge follows the primary too, so the key is refused within a couple
    of polls and its replica's stale answers never confirm it back."""
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",), sim_kwargs={"ttft_ms": 1.0}
    )
    try:
        tenant, key = await f.tenant_key()
        _, keys = await f.admin("GET", f"/v1/tenants/{tenant}/keys")
        url = f.edge_url("eu-west-1")
        hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
        async with aiohttp.ClientSession() as s:

            async def status() -> int:
                async with s.post(url + "v1/chat/completions", json=CHAT, headers=hdrs) as r:
                    return r.status

            assert await status() == 200
            replica = f.replicas["eu-west-1"]
            await asyncio.to_thread(replica.command, "REPLICAOF", "127.0.0.1", str(free_port()))
            answer = await f.admin("DELETE", f"/v1/tenants/{tenant}/keys/{keys['keys'][0]['id']}")
            assert answer[0] == 204
            stale = await asyncio.to_thread(replica.command, "HLEN", KEY_API_KEYS)
            assert stale == "1"  # the replica still holds the revoked key

            async def refused() -> bool:
                return await status() == 401

            await wait_for(refused, timeout=5, interval=0.1, what="the revoked key refused")
            for _ in range(10):  # and it stays refused while the replica keeps answering stale
                assert await status() == 401
    finally:
        await f.close()


async def test_a_store_lost_with_the_control_planes_copy_starts_a_new_epoch_every_edge_takes(
    tmp_path: Path, serve: ServerFactory, geo_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fault campaign (seed 201): the control plane restarted while the primary was down, and
    the primary came back empty — the store's state and the control plane's copy of it lost together. The
    new control plane seeded the empty store at epoch 1 from version 1, behind every running edge, so they
    refused each later state as older: a dial written after it never reached them, a key issued after it
    was refused there, and a restarted edge refused every old key. The store now starts a new epoch (audited
    `initialise`): every edge, the running one and a restarted one, takes what it holds from then on."""
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",), sim_kwargs={"ttft_ms": 1.0}
    )
    edge = f.edges["eu-west-1"].edge
    try:
        _, old_key = await f.tenant_key({"rpm": 600}, name="before the loss")
        for weight in (90, 80, 70, 60, 50, 40):  # the edge well ahead of what a fresh store's versions reach
            status, _ = await f.admin(
                "PATCH", "/v1/regions/eu-west-1", body={"weight": weight, "reason": "x"}
            )
            assert status == 200

        async def applied(weight: int) -> bool:
            current = edge.feed.current
            return current is not None and current.regions["eu-west-1"].weight == weight

        await wait_for(lambda: applied(40), timeout=5, what="the edge to apply the dials")
        assert edge.feed.current is not None
        before = edge.feed.current.position

        async def lose_the_store() -> None:
            f.primary.kill()
            shutil.rmtree(f.primary.workdir / "appendonlydir")  # it comes back empty
            f.primary.start()
            await asyncio.to_thread(f.primary.wait_ready)

            async def edges_reported() -> bool:  # each one's applied snapshot, every interval: it lived
                return bool(await asyncio.to_thread(lambda: f.primary.client().keys("meridian:applied:*")))

            await wait_for(edges_reported, timeout=5, what="the edges to report their snapshots again")

        await f.restart_control_plane(lose_the_store)
        said = [r for r in caplog.records if "held state before and lost it" in r.getMessage()]
        assert [r.levelname for r in said] == ["WARNING"], caplog.text[-2000:]
        status, _ = await f.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 25, "reason": "after"})
        assert status == 200
        await wait_for(lambda: applied(25), timeout=5, what="the running edge to take a dial written after")
        assert edge.feed.current is not None and edge.feed.current.epoch > before[0], (
            before,
            edge.feed.current,
        )
        _, audit = await f.admin("GET", "/v1/audit?limit=50")
        assert [e for e in audit["entries"] if e["action"] == "initialise"], audit
        _, text = await f.admin("GET", "/metrics")  # what MeridianStateStoreInitialised pages on
        samples = {
            (s.name, s.labels.get("event")): s.value
            for m in text_string_to_metric_families(text)
            for s in m.samples
        }
        assert samples[("meridian_store_events_total", "initialise")] == 1.0, samples
        assert abs(samples[("meridian_store_epoch_seconds", None)] - time.time()) < 60, samples
        _, new_key = await f.tenant_key({"rpm": 600}, name="after the loss")
        late = Edge(edge.settings, topology=edge.topology)  # a restarted edge
        runner = await serve_edge(late, "127.0.0.1", 0, shutdown_timeout=2.0)
        try:
            for url in (f.edge_url("eu-west-1"), f"http://127.0.0.1:{runner.addresses[0][1]}/"):

                async def keys_agree(url: str = url) -> bool:
                    return await _status(url, new_key) == 200 and await _status(url, old_key) == 401

                await wait_for(keys_agree, timeout=5, what=f"{url}: the new key served, the lost one refused")
        finally:
            await runner.cleanup()
            await late.stop()
    finally:
        await f.close()


async def test_a_store_restored_from_an_older_backup_starts_a_new_epoch_the_running_edges_take(
    tmp_path: Path, serve: ServerFactory, geo_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runbook's restore of a backup (an RDB snapshot taken earlier) while the control plane restarts,
    so it has no copy newer than the backup to put back: the running edges had applied later states and
    refused the restored store's as older until its versions passed theirs — a dial or a revocation written
    meanwhile was acknowledged and never applied. The control plane now sees the store behind what the
    edges report they applied and starts a new epoch over it (audited `new-epoch`): the running edge takes
    the backup's state and every change after it, with no restart."""
    f = await start_fleet(
        tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",), sim_kwargs={"ttft_ms": 1.0}
    )
    edge, url = f.edges["eu-west-1"].edge, f.edge_url("eu-west-1")

    async def applied(weight: int) -> bool:
        current = edge.feed.current
        return current is not None and current.regions["eu-west-1"].weight == weight

    async def dial(weight: int) -> None:
        status, _ = await f.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": weight, "reason": "x"})
        assert status == 200
        await wait_for(lambda: applied(weight), timeout=5, what=f"the edge to apply the dial {weight}")

    try:
        tenant, kept = await f.tenant_key({"rpm": 600}, name="in the backup")
        await dial(90)
        backup = tmp_path / "backup.rdb"
        r = f.primary.client()
        r.save()  # the daily snapshot
        r.close()
        shutil.copy(f.primary.workdir / "dump.rdb", backup)
        _, later = await f.tenant_key({"rpm": 600}, name="after the backup")
        for weight in (80, 70, 60, 50, 40, 30):  # the edge well ahead of the backup
            await dial(weight)
        assert edge.feed.current is not None
        before = edge.feed.current.position

        async def restore_the_backup() -> None:
            f.primary.kill()
            shutil.rmtree(f.primary.workdir / "appendonlydir")
            shutil.copy(backup, f.primary.workdir / "dump.rdb")
            f.primary.extra = ("--appendonly", "no")  # Redis loads an RDB only with its AOF off: the
            f.primary.start()  # documented restore, the AOF turned back on once it is loaded
            await asyncio.to_thread(f.primary.wait_ready)
            r = f.primary.client()
            r.config_set("appendonly", "yes")
            r.close()
            f.primary.extra = ()

        await f.restart_control_plane(restore_the_backup)
        await wait_for(lambda: applied(90), timeout=10, what="the running edge to take the backup's state")
        assert edge.feed.current is not None and edge.feed.current.epoch > before[0], (
            before,
            edge.feed.current,
        )
        said = [r for r in caplog.records if "is behind what edge eu-west-1 applied" in r.getMessage()]
        assert [r.levelname for r in said] == ["WARNING"], caplog.text[-2000:]
        took = [r for r in caplog.records if "state store began a new epoch" in r.getMessage()]
        assert [r.name for r in took] == ["meridian.snapshot"], caplog.text[-2000:]  # the edge says so too
        _, audit = await f.admin("GET", "/v1/audit?limit=50")
        assert [e for e in audit["entries"] if e["action"] == "new-epoch"], audit
        _, text = await f.admin("GET", "/metrics")
        events = {
            s.labels.get("event"): s.value
            for m in text_string_to_metric_families(text)
            for s in m.samples
            if s.name == "meridian_store_events_total"
        }
        assert events.get("new_epoch") == 1.0 and not events.get("restore"), events

        async def keys_are_the_backups() -> bool:
            return await _status(url, kept) == 200 and await _status(url, later) == 401

        await wait_for(keys_are_the_backups, timeout=5, what="the backup's key set at the running edge")
        _, keys = await f.admin("GET", f"/v1/tenants/{tenant}/keys")
        status, _ = await f.admin("DELETE", f"/v1/tenants/{tenant}/keys/{keys['keys'][0]['id']}")
        assert status == 204

        async def revoked() -> bool:
            return await _status(url, kept) == 401

        await wait_for(revoked, timeout=5, what="a revocation after the restore to reach the running edge")
        await dial(25)
    finally:
        await f.close()


async def _status(edge_url: str, key: str) -> int:
    hdrs = {"X-Forwarded-For": CLIENT_IP["london"], "Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(edge_url + "v1/chat/completions", json=CHAT, headers=hdrs) as r,
    ):
        await r.read()
        return r.status
