"""Control plane over real HTTP and real Redis: admin API contract, audit, prober, static stability."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp
import pytest

from regionsim.model import Faults
from tests.fleet import Fleet, wait_for
from tests.geodb import CLIENT_IP

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_admin_api_status_codes(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s, s.get(fleet.admin_url + "/v1/regions") as r:
        assert r.status == 401
    status, _ = await fleet.admin("GET", "/v1/regions", token="not-a-token")
    assert status == 401
    status, body = await fleet.admin("GET", "/v1/regions", token=fleet.viewer_token)
    assert status == 200 and [r["name"] for r in body["regions"]] == list(fleet.topology.names)
    status, body = await fleet.admin(
        "PATCH",
        "/v1/regions/eu-west-1",
        token=fleet.viewer_token,
        body={"weight": 10, "reason": "viewer tries"},
    )
    assert status == 403 and "operator" in body["detail"]
    status, _ = await fleet.admin("GET", "/v1/regions/mars-north-1")
    assert status == 404
    status, _ = await fleet.admin("PATCH", "/v1/regions/mars-north-1", body={"weight": 1, "reason": "x"})
    assert status == 404
    for bad, field in [
        ({"weight": 101, "reason": "x"}, "weight"),
        ({"weight": "50", "reason": "x"}, "weight"),
        ({"weight": -1, "reason": "x"}, "weight"),
        ({"drained": "yes", "reason": "x"}, "drained"),
        ({"weight": 5}, "reason"),
        ({"weight": 5, "reason": "x", "colour": "red"}, "colour"),
        ({"reason": "nothing"}, "weight"),
    ]:
        status, body = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body=bad)
        assert status == 422, (bad, body)
        assert field in str(body), (bad, body)
    status, body = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body="{not json")
    assert status in (400, 422) and status != 500
    status, body = await fleet.admin("GET", "/v1/regions/eu-west-1")
    assert body["weight"] == 100  # nothing above changed anything


async def test_if_match_gives_optimistic_concurrency(fleet: Fleet) -> None:
    status, region = await fleet.admin("GET", "/v1/regions/us-west-2")
    version = region["version"]
    status, body = await fleet.admin(
        "PATCH",
        "/v1/regions/us-west-2",
        headers={"If-Match": f'"{version}"'},
        body={"weight": 70, "reason": "first writer"},
    )
    assert status == 200 and body["after"]["weight"] == 70 and body["after"]["version"] > version
    status, body = await fleet.admin(
        "PATCH",
        "/v1/regions/us-west-2",
        headers={"If-Match": str(version)},
        body={"weight": 20, "reason": "second writer, stale"},
    )
    assert status == 412 and str(body["after"] if "after" in body else body["detail"])
    status, body = await fleet.admin(
        "PATCH",
        "/v1/regions/us-west-2",
        headers={"If-Match": "abc"},
        body={"weight": 20, "reason": "garbage etag"},
    )
    assert status == 422 and "If-Match" in str(body)
    status, region = await fleet.admin("GET", "/v1/regions/us-west-2")
    assert region["weight"] == 70


async def test_audit_records_actor_reason_before_after(fleet: Fleet) -> None:
    await fleet.admin(
        "PATCH", "/v1/regions/ap-southeast-1", body={"drained": True, "reason": "maintenance 42"}
    )
    await fleet.admin(
        "PATCH", "/v1/regions/ap-southeast-1", body={"drained": False, "weight": 80, "reason": "back, partly"}
    )
    status, body = await fleet.admin("GET", "/v1/audit?limit=2", token=fleet.viewer_token)
    assert status == 200
    newest, older = body["entries"]
    assert newest["actor"] == "olivia" and newest["reason"] == "back, partly"
    assert newest["before"]["drained"] is True and newest["after"]["drained"] is False
    assert newest["after"]["weight"] == 80 and newest["region"] == "ap-southeast-1"
    assert older["reason"] == "maintenance 42" and older["before"]["drained"] is False
    assert older["after"]["drained"] is True
    assert newest["after"]["version"] > older["after"]["version"]


async def test_drained_region_gets_no_traffic(fleet: Fleet) -> None:
    status, _ = await fleet.admin(
        "PATCH", "/v1/regions/ap-southeast-1", body={"drained": True, "reason": "t"}
    )
    assert status == 200
    async with aiohttp.ClientSession() as s:

        async def moved() -> bool:
            async with s.post(
                fleet.edge_url("ap-southeast-1") + "v1/chat/completions",
                json=CHAT,
                headers={"X-Forwarded-For": CLIENT_IP["singapore"]},
            ) as r:
                return r.headers["X-Meridian-Region"] != "ap-southeast-1"

        await wait_for(moved, timeout=1, what="Singapore off a drained region")


async def test_openapi_schema_is_served(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s, s.get(fleet.admin_url + "/schema/openapi.json") as r:
        assert r.status == 200
        schema = await r.json()
    assert "/v1/regions/{name}" in schema["paths"] and "patch" in schema["paths"]["/v1/regions/{name}"]
    assert "bearer" in schema["components"]["securitySchemes"]


async def test_prober_marks_a_down_replica_within_three_intervals_and_no_request_fails(fleet: Fleet) -> None:
    interval = 0.5
    failures: list[int] = []
    served = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal served
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                async with s.post(
                    fleet.edge_url("eu-west-1") + "v1/chat/completions",
                    json=CHAT,
                    headers={"X-Forwarded-For": CLIENT_IP["london"]},
                ) as r:
                    await r.read()
                    if r.status != 200:
                        failures.append(r.status)
                    served += 1

    workers = [asyncio.create_task(load()) for _ in range(4)]
    await wait_for(lambda: _true(served > 20), timeout=5, what="load to flow")
    fleet.sim("eu-west-1", "euw1-a").faults = Faults(down=True)
    started = time.monotonic()

    async def marked() -> bool:
        _, body = await fleet.admin("GET", "/v1/regions/eu-west-1")
        return bool(body["replicas"]["euw1-a"] == "down")

    await wait_for(marked, timeout=3 * interval + 0.5, what="prober to mark euw1-a down")
    took = time.monotonic() - started
    print(f"\nreplica marked down after {took * 1000:.0f} ms (interval {interval * 1000:.0f} ms)")
    assert took <= 3 * interval + 0.2
    before = served
    await wait_for(lambda: _true(served > before + 40), timeout=5, what="more load after marking")
    stop.set()
    await asyncio.gather(*workers)
    assert failures == []
    _, body = await fleet.admin("GET", "/v1/regions/eu-west-1")
    assert body["health"] == "up"  # one of two replicas still serves: the region stays routable
    fleet.sim("eu-west-1", "euw1-a").faults = Faults()

    async def back() -> bool:
        _, body = await fleet.admin("GET", "/v1/regions/eu-west-1")
        return bool(body["replicas"]["euw1-a"] == "up")

    await wait_for(back, timeout=3 * interval + 0.5, what="prober to mark euw1-a up again")


async def _true(value: bool) -> bool:
    return value


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


async def test_edges_route_through_a_redis_outage_and_resync_after(fleet: Fleet) -> None:
    edge = fleet.edge_url("us-west-2")
    async with aiohttp.ClientSession() as s:

        async def metrics() -> str:
            async with s.get(edge + "metrics") as r:
                return await r.text()

        for rs in [*fleet.replicas.values(), fleet.primary]:
            rs.stop()
        await wait_for(lambda: _disconnected(metrics), timeout=5, what="edge to notice Redis is gone")
        age_then = _metric(await metrics(), "meridian_edge_snapshot_age_seconds")
        for _ in range(20):
            async with s.post(
                edge + "v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": CLIENT_IP["california"]}
            ) as r:
                assert r.status == 200 and r.headers["X-Meridian-Region"] == "us-west-2"
            async with s.get(edge + "readyz") as r:
                assert r.status == 200
        await wait_for(lambda: _age_above(metrics, age_then + 0.5), timeout=5, what="snapshot age to grow")

        fleet.primary.start()
        for rs in fleet.replicas.values():
            rs.start()
        for rs in [fleet.primary, *fleet.replicas.values()]:
            rs.wait_ready()
        await wait_for(lambda: _reconnected(metrics), timeout=5, what="edge to resync with Redis")

        # a change made after the restart reaches the edge: it follows the feed again
        async def patched() -> bool:
            status, _ = await fleet.admin(
                "PATCH", "/v1/regions/us-west-2", body={"weight": 0, "reason": "after restart"}
            )
            return status == 200

        await wait_for(patched, timeout=5, what="admin writes after Redis restart")

        async def moved() -> bool:
            async with s.post(
                edge + "v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": CLIENT_IP["california"]}
            ) as r:
                return r.headers["X-Meridian-Region"] != "us-west-2"

        await wait_for(moved, timeout=2, what="edge to apply a change made after the restart")


async def _disconnected(metrics: object) -> bool:
    return _metric(await metrics(), "meridian_edge_store_connected") == 0.0  # type: ignore[operator]


async def _reconnected(metrics: object) -> bool:
    text = await metrics()  # type: ignore[operator]
    return (
        _metric(text, "meridian_edge_store_connected") == 1.0
        and _metric(text, "meridian_edge_snapshot_age_seconds") < 1.0
    )


async def _age_above(metrics: object, threshold: float) -> bool:
    return _metric(await metrics(), "meridian_edge_snapshot_age_seconds") > threshold  # type: ignore[operator]


async def test_hostile_and_empty_admin_bodies_get_clear_4xx(fleet: Fleet) -> None:
    deep = '{"reason": ' + "[" * 1000 + "]" * 1000 + "}"
    status, body = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body=deep)
    assert status == 400 and "nested too deeply" in body["detail"], (status, body)
    status, body = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body="")
    assert status == 422 and "body is empty" in body["detail"], (status, body)


async def test_the_audit_of_one_region_is_found_however_many_entries_came_after(fleet: Fleet) -> None:
    assert (await fleet.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 90, "reason": "the one"}))[
        0
    ] == 200
    for i in range(60):  # more than 10 x the limit below, all about another region
        body = {"weight": 50 + i % 2, "reason": f"noise {i}"}
        assert (await fleet.admin("PATCH", "/v1/regions/us-east-1", body=body))[0] == 200
    status, body = await fleet.admin("GET", "/v1/audit?region=eu-west-1&limit=5")
    assert status == 200 and [e["reason"] for e in body["entries"]] == ["the one"]


async def test_a_reason_cannot_forge_log_lines(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meridian.api")
    forged = "ok\n2026-01-01 00:00:00 controlplane INFO meridian.api: root set weight=0 on all"
    status, _ = await fleet.admin("PATCH", "/v1/regions/eu-west-1", body={"weight": 80, "reason": forged})
    assert status == 200
    lines = [
        r.getMessage() for r in caplog.records if r.name == "meridian.api" and "weight=80" in r.getMessage()
    ]
    assert len(lines) == 1 and "\n" not in lines[0] and "\\n2026-01-01" in lines[0]
