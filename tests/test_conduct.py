"""How the edge conducts a request through the faults clients actually meet (issue: "route around failed
requests"): real edges, Redis and simulators; each test says what the client got, which replica saw how many
attempts, and that the edge serves a healthy request after."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from regionsim.model import Faults
from tests.conftest import ServerFactory
from tests.fleet import Fleet, start_fleet
from tests.geodb import CLIENT_IP

MODEL = "llama-3.1-8b-instruct"
FIRST_TOKEN_S = 0.5
# every priority's first-token limit short, so a slow replica is given up on quickly
TIMEOUTS = {p: {"first_token_s": FIRST_TOKEN_S} for p in ("critical", "normal", "batch")}


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        catalog=True,
        regions=("eu-west-1",),
        sim_kwargs={"ttft_ms": 1.0},
        edge_overrides={"timeouts": TIMEOUTS},
    )
    try:
        yield f
    finally:
        await f.close()


async def stream(fleet: Fleet, tokens: int = 5) -> tuple[int, dict[str, str], bytes, float]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": True,
    }
    headers = {"X-Forwarded-For": CLIENT_IP["london"]}
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers) as r,
    ):
        data = await r.read()
        return r.status, dict(r.headers), data, time.monotonic() - started


def replicas(fleet: Fleet) -> dict[str, Any]:
    return {name: fleet.sim("eu-west-1", name) for name in fleet.sims["eu-west-1"]}


@pytest.mark.parametrize("late_s", [3.0, 600.0], ids=["slow first token", "silent"])
async def test_a_stream_without_its_first_token_in_time_is_served_by_another_replica(
    fleet: Fleet, late_s: float
) -> None:
    """A streaming server sends its headers at once; a first token later than the first-token limit (or
    none at all) abandons the attempt, and the other replica answers within the limit plus its own time."""
    status, headers, _, _ = await stream(fleet)
    assert status == 200
    slow = headers["X-Meridian-Replica"]  # where this prompt goes (affinity keeps it there)
    sims = replicas(fleet)
    sims[slow].faults = Faults(extra_latency_ms=late_s * 1000)
    before = {name: sim.stats.requests for name, sim in sims.items()}
    status, headers, data, took = await stream(fleet)
    assert status == 200 and b"data: [DONE]" in data, data[-200:]
    assert headers["X-Meridian-Replica"] != slow
    assert took < FIRST_TOKEN_S + 1.0, took  # not the slow replica's 3 s, nor a silent one's forever
    seen = {name: sim.stats.requests - before[name] for name, sim in sims.items()}
    assert seen[slow] == 1 and sum(seen.values()) == 2, seen  # abandoned once, not retried on the same route
    sims[slow].faults = Faults()
    status, _, data, _ = await stream(fleet)
    assert status == 200 and b"data: [DONE]" in data  # and the edge serves a healthy request after
