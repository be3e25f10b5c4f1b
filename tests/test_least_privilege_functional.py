"""Least privilege as shipped (issue: "durability and least privilege"): the admin API's pools role (KEDA,
node agents) reads pools and posts interruption notices and nothing else; the control plane's /metrics
needs a token; an edge's Redis user writes in its own name only, and what it can still write is bounded."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import uvicorn
from redis.exceptions import NoPermissionError

from controlplane.api import create_app
from controlplane.settings import ControlPlaneSettings
from fleet.acl import CONTROL_PLANE, edge_user
from fleet.keys import (
    CHANNEL_CHANGES,
    KEY_API_KEYS,
    KEY_EDGES,
    KEY_OBSERVATIONS,
    KEY_REGIONS,
    KEY_TENANTS,
    observations_key,
    traffic_key,
    usage_key,
    wake_key,
)
from fleet.usage import hour_of, usage_field
from meridian.redisproc import free_port
from tests.fleet import ROOT, Fleet, ServerFactory, start_fleet, wait_for


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",))
    try:
        yield f
    finally:
        await f.close()


async def test_the_pools_role_reads_pools_and_posts_notices_and_nothing_else(fleet: Fleet) -> None:
    token = fleet.pools_token
    for path in ("/v1/pools", "/metrics"):
        status, _ = await fleet.admin("GET", path, token=token)
        assert status in (200, 503), path  # 503: no autoscaler in this fleet, still allowed through
    status, body = await fleet.admin(
        "POST", "/v1/pools/eu-west-1/sim-llm/interruptions", token=token, body={"replica": "ew1-a"}
    )
    assert status == 404, body  # allowed, and no autoscaled pool here (not 403)
    for method, path, body in (
        ("GET", "/v1/regions", None),
        ("GET", "/v1/tenants", None),
        ("GET", "/v1/audit", None),
        ("PATCH", "/v1/regions/eu-west-1", {"weight": 0, "reason": "x"}),
        ("POST", "/v1/tenants", {"name": "x"}),
    ):
        status, answer = await fleet.admin(method, path, token=token, body=body)
        assert status == 403 and "pools" in answer["detail"], (method, path, answer)
    status, answer = await fleet.admin(
        "POST", "/v1/pools/eu-west-1/sim-llm/interruptions", token=fleet.viewer_token, body={"replica": "a"}
    )
    assert status == 403, answer  # a viewer reads, never actuates


async def test_the_control_planes_metrics_need_a_token(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s, s.get(fleet.admin_url + "/metrics") as r:
        assert r.status == 401
    status, _ = await fleet.admin("GET", "/metrics", token=fleet.viewer_token)
    assert status == 200


async def test_what_the_edge_credential_can_still_write_is_refused_or_harmless(fleet: Fleet) -> None:
    """With the shipped edge user: routing state, tenants, keys and the change channel are refused; a
    negative usage counter is ignored by every reader; forged observations about unknown regions or with
    impossible counts are dropped; a forged wake mark dated forever counts nothing."""
    tenant, _ = await fleet.tenant_key()
    edge = aioredis.Redis.from_url(fleet.primary.url_for(edge_user("eu-west-1")))
    try:
        for command in (
            ("HSET", KEY_REGIONS, "eu-west-1", "{}"),
            ("HSET", KEY_TENANTS, "t-x", "{}"),
            ("HSET", KEY_API_KEYS, "d", "{}"),
            ("PUBLISH", CHANNEL_CHANGES, "{}"),
            ("SET", "meridian:state:version", "1"),
            ("SADD", KEY_EDGES, "mallory"),
        ):
            with pytest.raises(NoPermissionError):
                await edge.execute_command(*command)
        hour = hour_of(time.time())
        own = usage_key("eu-west-1", tenant, hour)
        await edge.hincrby(own, usage_field("eu-west-1", "requests", "sim-llm"), -1000)
        intake = fleet.admin_app.state.intake
        before = intake.rejected
        mine = observations_key("eu-west-1")
        await edge.xadd(mine, {"region": "atlantis", "requests": 100, "errors": 100})
        await edge.xadd(mine, {"region": "eu-west-1", "requests": 1, "errors": 5})
        await edge.hset(wake_key("eu-west-1", "sim-llm"), "x/1", "5 inf")
    finally:
        await edge.aclose()
    status, report = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
    assert status == 200 and report["totals"]["requests"] == 0, report  # not -1000

    async def dropped() -> bool:
        return bool(intake.rejected >= before + 2)

    await wait_for(dropped, timeout=5, what="the forged observations dropped")
    assert fleet.admin_app.state.prober.book.health("eu-west-1", time.monotonic()) is None


async def test_an_edges_user_writes_in_its_own_name_only(fleet: Fleet) -> None:
    """Each edge has its own Redis user: it cannot append to another edge's observation stream (or the
    shared one of before) or add to another edge's usage and traffic; what it writes in its own stream
    counts as its own view whatever the row claims; usage no edge could count is left out of the report."""
    tenant, _ = await fleet.tenant_key()
    hour, minute = hour_of(time.time()), int(time.time() // 60)
    edge = aioredis.Redis.from_url(fleet.primary.url_for(edge_user("eu-west-1")))
    try:
        for command in (
            (
                "XADD",
                observations_key("us-east-1"),
                "*",
                "region",
                "eu-west-1",
                "requests",
                "9",
                "errors",
                "9",
            ),
            ("XADD", KEY_OBSERVATIONS, "*", "region", "eu-west-1", "requests", "9", "errors", "9"),
            ("HINCRBY", usage_key("us-east-1", tenant, hour), usage_field("eu-west-1", "requests", "m"), "1"),
            ("HINCRBY", usage_key(None, tenant, hour), usage_field("eu-west-1", "requests", "m"), "1"),
            ("HINCRBY", traffic_key("us-east-1", "eu-west-1", minute), "requests|m", "1"),
        ):
            with pytest.raises(NoPermissionError):
                await edge.execute_command(*command)
        # in its own name: a claim to be another edge is not believed ...
        await edge.xadd(
            observations_key("eu-west-1"),
            {"edge": "us-east-1", "region": "eu-west-1", "requests": 4, "errors": 0},
        )
        # ... and one request with a trillion tokens is no edge's count
        own = usage_key("eu-west-1", tenant, hour)
        await edge.hincrby(own, usage_field("eu-west-1", "requests", "sim-llm"), 1)
        await edge.hincrby(own, usage_field("eu-west-1", "prompt_tokens", "sim-llm"), 10**12)
    finally:
        await edge.aclose()
    book = fleet.admin_app.state.prober.book

    async def attributed() -> bool:
        return ("eu-west-1", "eu-west-1") in book.seen_at

    await wait_for(attributed, timeout=5, what="the row folded as eu-west-1's view")
    assert not any(e == "us-east-1" for e, _ in book.seen_at), book.seen_at
    status, report = await fleet.admin("GET", f"/v1/tenants/{tenant}/usage")
    assert status == 200 and report["totals"]["prompt_tokens"] == 0, report


async def test_the_admin_api_serves_https_with_the_certificate_from_settings(
    fleet: Fleet, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    settings = ControlPlaneSettings(
        redis_url=fleet.primary.url_for(CONTROL_PLANE),
        regions_file=ROOT / "regions.yaml",
        tls_cert_file=cert,
        tls_key_file=key,
        probe_enabled=False,
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", **settings.uvicorn_tls()
        )  # what controlplane.main passes
    )
    task = asyncio.create_task(server.serve())
    try:
        trusted = ssl.create_default_context(cafile=str(cert))

        async def up() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"https://127.0.0.1:{port}/healthz", ssl=trusted) as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(up, timeout=10, what="the admin API over HTTPS")
        with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS port
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
                await r.read()
                raise aiohttp.ClientError(f"answered {r.status} over plain HTTP")
    finally:
        server.should_exit = True
        await task


def test_a_certificate_without_its_key_stops_start_up(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="MERIDIAN_TLS_CERT_FILE and MERIDIAN_TLS_KEY_FILE"):
        ControlPlaneSettings(tls_cert_file=cert)
