"""Model-aware, engine-aware routing on real processes: redis-server, simulators serving regions.yaml's
catalog, the control plane scraping their engines, and edges over loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

BIG = "llama-3.1-70b-instruct"  # served in us-east-1 and eu-west-1 only
SMALL = "llama-3.1-8b-instruct"


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, catalog=True, edge_overrides={"slow_start_s": 0.0})
    try:
        yield f
    finally:
        await f.close()


async def chat(
    fleet: Fleet, edge: str, client: str, model: str, *, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, dict[str, str], dict[str, Any]]:
    payload = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], **body}
    hdrs = {"X-Forwarded-For": CLIENT_IP[client], **(headers or {})}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url(edge) + "v1/chat/completions", json=payload, headers=hdrs) as r,
    ):
        return r.status, dict(r.headers), await r.json()


async def test_a_model_served_only_far_away_is_routed_there_and_unknown_models_are_404(fleet: Fleet) -> None:
    status, headers, body = await chat(fleet, "ap-southeast-1", "singapore", BIG)
    assert status == 200 and headers["X-Meridian-Region"] in ("us-east-1", "eu-west-1")
    assert headers["X-Meridian-Model"] == BIG and body["model"] == BIG
    status, headers, _ = await chat(fleet, "ap-southeast-1", "singapore", SMALL)
    assert status == 200 and headers["X-Meridian-Region"] == "ap-southeast-1"  # the small model stays home
    status, headers, body = await chat(fleet, "ap-southeast-1", "singapore", "gpt-9")
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "gpt-9" in body["error"]["message"]
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url("ap-southeast-1") + "metrics") as r:
        assert "meridian_edge_model_not_found_total 1.0" in await r.text()


async def test_fallback_is_used_only_when_no_serving_region_is_routable_and_is_visible(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url("us-east-1") + "v1/models") as r:
        listed = {m["id"]: m["meridian"]["regions"] for m in (await r.json())["data"]}
    assert listed[BIG] == ["eu-west-1", "us-east-1"] and len(listed) == 4
    for region in ("us-east-1", "eu-west-1"):
        status, _ = await fleet.admin("PATCH", f"/v1/regions/{region}", body={"drained": True, "reason": "t"})
        assert status == 200

    async def gone() -> bool:
        async with aiohttp.ClientSession() as s, s.get(fleet.edge_url("us-east-1") + "v1/models") as r:
            return BIG not in {m["id"] for m in (await r.json())["data"]}

    await wait_for(gone, timeout=5, what="70B to leave /v1/models once both its regions are drained")
    status, headers, body = await chat(fleet, "us-east-1", "new_york", BIG)
    assert status == 200 and headers["X-Meridian-Model"] == SMALL and body["model"] == SMALL
    assert headers["X-Meridian-Region"] in ("us-west-2", "ap-southeast-1")


async def test_the_same_affinity_key_lands_on_the_same_replica_from_two_edges(fleet: Fleet) -> None:
    replicas = set()
    for i in range(6):
        for edge in ("us-east-1", "eu-west-1"):  # a Frankfurt client: pinned to eu-west-1 from any edge
            _, headers, _ = await chat(
                fleet, edge, "frankfurt", SMALL, prompt_cache_key=f"conversation-{i % 2}"
            )
            replicas.add((i % 2, headers["X-Meridian-Replica"]))
    assert len(replicas) == 2  # each key kept one replica across edges and turns
    async with aiohttp.ClientSession() as s, s.get(fleet.edge_url("eu-west-1") + "metrics") as r:
        assert 'meridian_edge_affinity_picks{result="hit"} 6.0' in await r.text()


async def test_a_saturated_replica_gets_no_new_requests_while_its_peer_has_room(fleet: Fleet) -> None:
    sim = fleet.sim("eu-west-1", "euw1-a")
    sim.engine.max_batch = 1
    url = str(fleet.sims["eu-west-1"]["euw1-a"].make_url("/v1/chat/completions"))
    slow = {"model": SMALL, "max_tokens": 400, "messages": [{"role": "user", "content": "long"}]}
    async with aiohttp.ClientSession() as s:
        flood = [asyncio.create_task(s.post(url, json=slow)) for _ in range(8)]  # 1 runs, 7 wait

        async def seen_saturated() -> bool:
            async with s.get(fleet.edge_url("eu-west-1") + f"_meridian/route?ip={CLIENT_IP['london']}") as r:
                body = await r.json()
            rows = {x["replica"]: x for c in body["candidates"] for x in c["replicas"]}
            return bool(rows["euw1-a"]["saturated"])

        await wait_for(seen_saturated, timeout=10, what="the edge to see euw1-a's queue")
        before = sim.stats.requests
        served = [
            await chat(fleet, "eu-west-1", "london", SMALL, headers={"X-Session-Id": f"s{i}"})
            for i in range(20)
        ]
        assert {h["X-Meridian-Replica"] for _, h, _ in served} == {"euw1-b"}
        assert sim.stats.requests == before
        for t in flood:
            t.cancel()
