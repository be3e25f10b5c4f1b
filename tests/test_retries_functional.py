"""Routing around failed requests, not only failed regions (issue: "retries by cause, fallbacks on error"):
a 429 or a 500 from one replica is retried on the region's other replica (a 500 from a region's only engine
in the next region), a 503 that every replica of a model answers falls back to the catalog's next model, and
a region keeps its 429s out of its breakers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleet.topology import load_topology
from regionsim.model import Faults
from tests.fleet import ROOT, Fleet, ServerFactory, start_fleet
from tests.geodb import CLIENT_IP

BIG, SMALL = "llama-3.1-70b-instruct", "llama-3.1-8b-instruct"  # regions.yaml: BIG falls back to SMALL


async def two_regions(tmp_path: Path, serve: ServerFactory, geo_db: Path, **overrides: Any) -> Fleet:
    """eu-west-1 and us-east-1 with the catalog and fast simulators (``overrides``: more of start_fleet's)."""
    return await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        catalog=True,
        regions=("eu-west-1", "us-east-1"),
        sim_kwargs={"ttft_ms": 1.0},
        **overrides,
    )


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await two_regions(tmp_path, serve, geo_db)
    try:
        yield f
    finally:
        await f.close()


async def chat(fleet: Fleet, model: str) -> tuple[int, dict[str, str], Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    headers = {"X-Forwarded-For": CLIENT_IP["london"]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.json()


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_one_failing_replica_is_retried_on_the_other_replica_of_the_region(
    fleet: Fleet, status: int
) -> None:
    _, headers, _ = await chat(fleet, SMALL)
    first = headers["X-Meridian-Replica"]  # where this prompt goes (prefix affinity keeps it there)
    (second,) = set(fleet.sims["eu-west-1"]) - {first}
    fleet.sim("eu-west-1", first).faults = Faults(error_rate=1.0, error_status=status, retry_after_s=1)
    for _ in range(3):
        code, headers, body = await chat(fleet, SMALL)
        assert code == 200, body
        assert headers["X-Meridian-Region"] == "eu-west-1" and headers["X-Meridian-Replica"] == second
    assert fleet.sim("eu-west-1", first).stats.errors >= 1  # it was tried, and answered its fault


async def test_every_replica_of_a_model_failing_falls_back_to_the_catalogs_next_model(fleet: Fleet) -> None:
    for region in fleet.sims:
        for rep in fleet.sims[region]:
            fleet.sim(region, rep).faults = Faults(error_rate=1.0, error_status=503, models=[BIG])
    code, headers, body = await chat(fleet, BIG)
    assert code == 200, body
    assert headers["X-Meridian-Model"] == SMALL and body["model"] == SMALL
    code, _, body = await chat(fleet, SMALL)  # the fallback itself was never at fault
    assert code == 200, body


async def test_a_500_is_retried_once_and_a_request_that_breaks_two_engines_stops(fleet: Fleet) -> None:
    """The request itself may be what breaks an engine (a query of death): after the region's other replica
    answered 500 too, no third engine is asked."""
    for rep in fleet.sims["eu-west-1"]:
        fleet.sim("eu-west-1", rep).faults = Faults(error_rate=1.0, error_status=500)
    code, headers, body = await chat(fleet, SMALL)
    assert code == 500 and headers["X-Meridian-Region"] == "eu-west-1", body
    assert headers["X-Meridian-Attempts"] == "2"  # the other replica once, no other region
    assert sum(fleet.sim("us-east-1", r).stats.requests for r in fleet.sims["us-east-1"]) == 0


async def test_a_500_from_a_regions_only_engine_is_retried_in_the_next_region(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """An engine that broke answers 500 to everything; where it is its region's only one, the client is
    answered from the next region, not given the 500 until the breaker ejects the engine (found by the fault
    campaign's engine-errors: five clients got the 500 each time)."""
    eu = next(r for r in load_topology(ROOT / "regions.yaml").regions if r.name == "eu-west-1")
    only = eu.replicas[0].model_dump(mode="json")
    f = await two_regions(
        tmp_path, serve, geo_db, region_overrides={"eu-west-1": {"replicas": [only], "pools": []}}
    )
    try:
        f.sim("eu-west-1", only["name"]).faults = Faults(error_rate=1.0, error_status=500)
        for _ in range(3):
            code, headers, body = await chat(f, SMALL)
            assert code == 200, body
            assert headers["X-Meridian-Region"] == "us-east-1" and headers["X-Meridian-Attempts"] == "2"
        assert f.sim("eu-west-1", only["name"]).stats.errors == 3
    finally:
        await f.close()


async def test_a_replica_that_breaks_off_its_streams_is_ejected_like_any_failing_one(fleet: Fleet) -> None:
    """A stream cut after its first bytes cannot be retried, but it is a failure of that replica: the outcome
    sink counts it against the breaker, which ejects the replica after its consecutive failures."""
    body = {"model": SMALL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    headers = {"X-Forwarded-For": CLIENT_IP["london"]}
    url = fleet.edge_url("eu-west-1") + "v1/chat/completions"

    async def stream(s: aiohttp.ClientSession) -> tuple[str, bool]:
        async with s.post(url, json=body, headers=headers) as r:
            replica = r.headers["X-Meridian-Replica"]
            try:
                whole = b"data: [DONE]" in await r.read()
            except aiohttp.ClientPayloadError:
                whole = False
        return replica, whole

    async with aiohttp.ClientSession() as s:
        first, whole = await stream(s)
        assert whole
        fleet.sim("eu-west-1", first).faults = Faults(cut_after_tokens=2)
        seen = [await stream(s) for _ in range(8)]
    assert all(whole for _, whole in seen), seen  # each cut stream went on at the other replica, whole
    served_by = [r for r, _ in seen]
    assert served_by[0] == first and served_by[-1] != first, seen  # until the cutting one's breaker opened
