"""Tenants and API keys on real processes: the admin API issues and revokes keys (audited, the secret shown
once), every edge authenticates against the digests the store replicates, and neither logs, spans nor
regions ever see a client's key."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

REGION_KEY = "region-credential-0123"  # what regions get instead of a client's key
CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        edge_overrides={"region_api_key": REGION_KEY},
        sim_kwargs={"api_key": REGION_KEY},  # the regions, like vLLM with --api-key, refuse anything else
    )
    try:
        yield f
    finally:
        await f.close()


async def chat(fleet: Fleet, edge: str, key: str | None, **headers: str) -> tuple[int, dict[str, Any]]:
    hdrs = {"X-Forwarded-For": CLIENT_IP["london"], **headers}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url(edge) + "v1/chat/completions", json=CHAT, headers=hdrs) as r,
    ):
        return r.status, await r.json()


async def new_tenant(fleet: Fleet, **fields: Any) -> tuple[str, str, str]:
    name = f"acme-{secrets.token_hex(3)}"  # names are unique
    status, tenant = await fleet.admin("POST", "/v1/tenants", body={"name": name, **fields})
    assert status == 201, tenant
    status, issued = await fleet.admin("POST", f"/v1/tenants/{tenant['id']}/keys")
    assert status == 201 and issued["key"].startswith(issued["prefix"]), issued
    return tenant["id"], issued["id"], issued["key"]


async def test_no_key_or_a_wrong_key_is_401_in_openais_shape(fleet: Fleet) -> None:
    for key in (None, "mk-not-a-key-at-all"):
        status, body = await chat(fleet, "eu-west-1", key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body
        assert "mk-not" not in str(body)
    _, _, key = await new_tenant(fleet)

    async def accepted() -> bool:
        return (await chat(fleet, "eu-west-1", key))[0] == 200

    deadline = time.monotonic() + 2
    while not await accepted():  # the edges take new keys on their next poll
        assert time.monotonic() < deadline, "the edge never took the new key"
        await asyncio.sleep(0.05)


async def test_a_revoked_key_is_refused_by_every_edge_within_a_second(fleet: Fleet) -> None:
    tenant, key_id, key = await new_tenant(fleet)
    for edge in fleet.edges:
        deadline = time.monotonic() + 2
        while (await chat(fleet, edge, key))[0] != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    status, listed = await fleet.admin("GET", f"/v1/tenants/{tenant}/keys")
    assert status == 200 and [k["id"] for k in listed["keys"]] == [key_id] and key not in str(listed)
    status, _ = await fleet.admin("DELETE", f"/v1/tenants/{tenant}/keys/{key_id}", token=fleet.viewer_token)
    assert status == 403
    status, _ = await fleet.admin("DELETE", f"/v1/tenants/{tenant}/keys/{key_id}")
    revoked = time.monotonic()
    assert status == 204
    refused: dict[str, float] = {}
    while len(refused) < len(fleet.edges):
        for edge in fleet.edges:
            if edge not in refused and (await chat(fleet, edge, key))[0] == 401:
                refused[edge] = time.monotonic() - revoked
        assert time.monotonic() - revoked < 1.0, (
            f"still accepted after 1 s by {set(fleet.edges) - set(refused)}"
        )
    _, audit = await fleet.admin("GET", f"/v1/audit?region=tenant:{tenant}")
    assert [e["action"] for e in audit["entries"]][:2] == [f"revoke key {key_id}", "issue key"]


async def test_priority_is_capped_by_the_tenant_and_its_models_are_enforced(fleet: Fleet) -> None:
    _, _, key = await new_tenant(fleet, priority="normal", models=["sim-llm"])
    deadline = time.monotonic() + 2
    while (await chat(fleet, "eu-west-1", key))[0] != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    fleet.exporter.clear()
    status, _ = await chat(fleet, "eu-west-1", key, **{"X-Meridian-Priority": "critical"})
    assert status == 200
    spans = [s for s in fleet.exporter.get_finished_spans() if "meridian.priority" in (s.attributes or {})]
    assert spans and all(s.attributes["meridian.priority"] == "normal" for s in spans)  # type: ignore[index]
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            fleet.edge_url("eu-west-1") + "v1/chat/completions", json={**CHAT, "model": "other"}, headers=hdrs
        ) as r,
    ):
        body = await r.json()
        assert r.status == 404 and body["error"]["code"] == "model_not_found"


async def test_keys_never_reach_logs_spans_regions_or_the_audit(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant, _, key = await new_tenant(fleet)
    deadline = time.monotonic() + 2
    while (await chat(fleet, "us-east-1", key))[0] != 200:  # served: the region took REGION_KEY, not ours
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for _ in range(3):
        assert (await chat(fleet, "us-east-1", key))[0] == 200
        assert (await chat(fleet, "us-east-1", key + "x"))[0] == 401
    assert key not in caplog.text
    for span in fleet.exporter.get_finished_spans():
        assert key not in str(span.attributes) and key not in str(span.events)
    _, audit = await fleet.admin("GET", "/v1/audit?limit=1000")
    _, tenants = await fleet.admin("GET", "/v1/tenants")
    assert key not in str(audit) and key not in str(tenants)
    assert [t["id"] for t in tenants["tenants"]] == [tenant]


async def test_tenant_names_are_unique_without_regard_to_case(fleet: Fleet) -> None:
    status, first = await fleet.admin("POST", "/v1/tenants", body={"name": "Globex"})
    assert status == 201
    status, body = await fleet.admin("POST", "/v1/tenants", body={"name": "globex"})
    assert status == 409 and body["extra"] == [{"key": "name", "source": "body"}], body
    status, other = await fleet.admin("POST", "/v1/tenants", body={"name": "Initech"})
    status, body = await fleet.admin("PATCH", f"/v1/tenants/{other['id']}", body={"name": "GLOBEX"})
    assert status == 409, body
    status, body = await fleet.admin("PATCH", f"/v1/tenants/{first['id']}", body={"name": "globex"})
    assert status == 200 and body["name"] == "globex"  # its own name, another case


async def test_a_patch_takes_a_whole_number_written_as_a_float_like_json_schema_does(fleet: Fleet) -> None:
    status, tenant = await fleet.admin("POST", "/v1/tenants", body={"name": "floaty"})
    status, body = await fleet.admin(
        "PATCH", f"/v1/tenants/{tenant['id']}", body={"limits": {"max_concurrent": 312.0, "rpm": 5.0}}
    )
    assert status == 200 and body["limits"]["max_concurrent"] == 312 and body["limits"]["rpm"] == 5, body


async def test_a_key_with_an_expiry_works_until_then_and_is_refused_after_saying_it_expired(
    fleet: Fleet,
) -> None:
    tenant, _, _ = await new_tenant(fleet)
    at = datetime.now(UTC) + timedelta(seconds=2)
    status, issued = await fleet.admin(
        "POST", f"/v1/tenants/{tenant}/keys", body={"expires_at": at.isoformat()}
    )
    assert status == 201 and issued["expires_at"] == pytest.approx(at.timestamp())
    key = issued["key"]

    async def taken() -> bool:
        return (await chat(fleet, "eu-west-1", key))[0] == 200

    await wait_for(taken, timeout=3, what="the edge to take the new key")
    status, keys = await fleet.admin("GET", f"/v1/tenants/{tenant}/keys")
    assert [k["expires_at"] for k in keys["keys"] if k["id"] == issued["id"]] == [issued["expires_at"]]

    async def refused() -> bool:
        return (await chat(fleet, "eu-west-1", key))[0] == 401

    await wait_for(refused, timeout=5, what="the key refused once it expired")
    assert time.time() >= at.timestamp()  # not before its time
    status, body = await chat(fleet, "us-east-1", key)  # every edge
    assert status == 401 and body["error"]["code"] == "expired_api_key", body
    assert "expired at" in body["error"]["message"] and key not in body["error"]["message"]
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    status, body = await fleet.admin("POST", f"/v1/tenants/{tenant}/keys", body={"expires_at": past})
    assert status == 422 and body["fields"] == ["expires_at"] and "passed" in body["detail"], body
    status, body = await fleet.admin("POST", f"/v1/tenants/{tenant}/keys", body={"expires_at": "2030-01-01"})
    assert status == 422 and body["fields"] == ["expires_at"], body  # no zone: refused, not guessed
