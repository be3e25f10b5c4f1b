"""Tenant limits across four edges on real processes: one Redis primary grants leases of each tenant's
budget, the edges spend them locally; what passes over a run is the configured rate, within the stated
bounds (GCRA's 1 s tolerance and one lease per edge above it, at least 95 % of it below); 429s in OpenAI's
shape; the local share while the primary is down."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from edge.admission.limiter import REGISTER_S
from edge.admission.limits import LEASE_S, SLOTS_RECHECK_S, SLOTS_TTL_S, TOLERANCE_S, Bucket
from edge.server.build import LEASE_TIMEOUT_S
from fleet.acl import edge_user
from tests.fleet import Fleet, ServerFactory, edge_counts, start_fleet, wait_for
from tests.geodb import CLIENT_IP

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, auth=True, sim_kwargs={"ttft_ms": 1.0})
    try:
        yield f
    finally:
        await f.close()


async def tenant_key(fleet: Fleet, limits: dict[str, int]) -> str:
    return (await fleet.tenant_key(limits))[1]


async def drive(
    fleet: Fleet, key: str, seconds: float, per_edge: int, edges: list[str], backoff_s: float = 0.0
) -> Counter[int]:
    """Clients looping on every edge for ``seconds``, each pausing ``backoff_s`` after a refusal: the
    statuses they got."""
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    deadline = time.monotonic() + seconds

    async def client(s: aiohttp.ClientSession, url: str) -> None:
        while time.monotonic() < deadline:
            async with s.post(url, json=CHAT, headers=headers) as r:
                await r.read()
                statuses[r.status] += 1
            if r.status == 429 and backoff_s:
                await asyncio.sleep(backoff_s)

    async with aiohttp.ClientSession() as s:
        urls = [fleet.edge_url(e) + "v1/chat/completions" for e in edges]
        await asyncio.gather(*(client(s, u) for u in urls for _ in range(per_edge)))
    return statuses


async def test_requests_per_minute_hold_across_four_edges_within_the_stated_bounds(fleet: Fleet) -> None:
    rpm, seconds = 1800, 8.0  # 30 a second, offered several times that through 4 edges
    key = await tenant_key(fleet, {"rpm": rpm})
    started = time.monotonic()
    statuses = await drive(fleet, key, seconds, per_edge=3, edges=list(fleet.edges))
    elapsed = time.monotonic() - started
    rate = rpm / 60
    lease = math.ceil(rate * LEASE_S)
    passed = statuses[200] / (rate * elapsed)
    print(
        f"\nrpm {rpm}, {elapsed:.2f} s, 4 edges: {statuses[200]} passed ({passed:.1%}), {statuses[429]} not"
    )
    assert statuses[429] > statuses[200], statuses  # the offered load was well above the limit
    assert statuses[200] >= 0.95 * rate * seconds, statuses  # no early trips
    assert statuses[200] <= rate * (elapsed + TOLERANCE_S) + len(fleet.edges) * lease, statuses
    assert set(statuses) == {200, 429}


async def test_a_refusal_is_openais_429_and_every_answer_carries_the_rate_headers(fleet: Fleet) -> None:
    key = await tenant_key(fleet, {"rpm": 60, "tpm": 100_000})
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    seen: list[tuple[int, dict[str, str], Any]] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(12):  # 1 a second allowed, 1 s of tolerance: a dozen at once cannot all pass
            async with s.post(
                fleet.edge_url("eu-west-1") + "v1/chat/completions", json=CHAT, headers=headers
            ) as r:
                seen.append((r.status, dict(r.headers), await r.json()))
    ok = [h for status, h, _ in seen if status == 200]
    refused = [(h, b) for status, h, b in seen if status == 429]
    assert ok and refused
    assert ok[0]["x-ratelimit-limit-requests"] == "60" and ok[0]["x-ratelimit-limit-tokens"] == "100000"
    h, body = refused[0]
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert int(h["Retry-After"]) >= 1 and int(h["x-ratelimit-remaining-requests"]) < 60
    assert h["x-ratelimit-reset-requests"].endswith("s")


def reservation(body: dict[str, Any]) -> int:
    """The tokens the edge reserves for ``body`` as it arrives: its bytes / 4 (the prompt's estimate) plus its
    max_tokens (aiohttp's ``json=`` sends ``json.dumps``'s bytes)."""
    return len(json.dumps(body).encode()) // 4 + int(body["max_tokens"])


async def test_tokens_per_minute_count_each_requests_real_usage(fleet: Fleet) -> None:
    key = await tenant_key(fleet, {"tpm": 6_000})  # 100 a second; each request reserves ~26, uses 4
    seconds = 4.0
    statuses = await drive(fleet, key, seconds, per_edge=2, edges=["eu-west-1", "us-east-1"])
    reserved = reservation(CHAT)
    used = 2 + 2  # the simulator's usage: "<|user|>hi" is 2 prompt tokens, then 2 completion tokens
    print(f"\ntpm 6000, {seconds:g} s: {statuses[200]} passed ({statuses[200] * used} tokens used)")
    assert statuses[429] > 0
    assert statuses[200] * used >= 0.9 * 100 * seconds  # paid at its real usage: no early trips
    # above the rate: the tolerance, a lease per edge, and the reservations of the requests in flight
    assert statuses[200] * used <= 100 * (seconds + TOLERANCE_S) + 2 * math.ceil(100 * LEASE_S) + 4 * reserved


async def test_with_the_primary_down_each_edge_enforces_its_share(fleet: Fleet) -> None:
    key = await tenant_key(fleet, {"rpm": 2400})  # 40 a second: 10 for each of 4 edges

    async def registered() -> bool:  # each edge process counts the live ones (they register every second)
        return all(e.edge.limiter is not None and e.edge.limiter.edges == 4 for e in fleet.edges.values())

    await wait_for(registered, timeout=5, what="every edge to count 4 live edge processes")
    fleet.primary.stop()
    statuses = await drive(fleet, key, 3.0, per_edge=3, edges=["eu-west-1"])
    share = 2400 / 60 / len(fleet.edges)
    print(
        f"\nprimary down: {statuses[200]} passed in 3 s at one edge (share {share:.0f}/s), {statuses[429]} no"
    )
    assert statuses[429] > statuses[200], statuses  # not open
    assert 0.8 * share * 3.0 <= statuses[200] <= share * (3.0 + TOLERANCE_S) + 40 * LEASE_S + 2, statuses


async def test_a_primary_refusing_the_limit_scripts_is_told_apart_and_the_share_serves(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped failure this wave began with: the edge's Redis user may not run the limit scripts (NOPERM).
    Every refused call counts as kind="refused" (what MeridianLimitsRefusedByPrimary alerts on), never as an
    outage; the edge serves on its share meanwhile; once the user is fixed, the refusals stop. The log says
    so once when it begins and once when it ends, not once a second while it lasts."""
    caplog.set_level(logging.WARNING, logger="meridian.limits")
    key = await tenant_key(fleet, {"rpm": 2400})
    metrics = fleet.edges["eu-west-1"].make_url("/metrics")
    ops = fleet.primary.client()
    try:
        ops.acl_setuser(edge_user("eu-west-1"), enabled=True, commands=["-evalsha", "-eval"])
        statuses = await drive(fleet, key, 0.5, per_edge=1, edges=["eu-west-1"])
        driven = (await edge_counts(metrics, "limits_primary_failures", "kind")).get("refused", 0)

        async def two_more_registrations_refused() -> bool:  # no requests now: one call a second
            refused = (await edge_counts(metrics, "limits_primary_failures", "kind")).get("refused", 0)
            return bool(refused >= driven + 2)

        await wait_for(two_more_registrations_refused, timeout=10, what="two more registrations refused")
        broken = await edge_counts(metrics, "limits_primary_failures", "kind")
        ops.acl_setuser(edge_user("eu-west-1"), enabled=True, commands=["+evalsha", "+eval"])
    finally:
        ops.close()
    assert statuses[200] >= 1, statuses  # the edge's share served
    assert broken.get("refused", 0) >= 3 and "unreachable" not in broken, broken
    seen = [broken["refused"]]

    async def refusals_stopped() -> bool:  # polled every registration (1 s): unchanged across one
        seen.append((await edge_counts(metrics, "limits_primary_failures", "kind"))["refused"])
        return seen[-1] == seen[-2]

    await wait_for(refusals_stopped, timeout=10, interval=1.5 * REGISTER_S, what="refusals to stop")
    assert (await drive(fleet, key, 0.5, per_edge=1, edges=["eu-west-1"]))[200] >= 1

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "meridian.limits"]

    async def ended() -> bool:  # at the edge's next registration
        return any("takes the limit scripts again" in m for m in said())

    await wait_for(ended, timeout=5, what="the edge to log that the primary takes its scripts again")
    begun = [m for m in said() if "refused the limit script" in m and "check the edge's Redis ACL user" in m]
    assert len(begun) == 1, said()


async def test_concurrent_requests_hold_across_edges_and_slots_come_back(fleet: Fleet) -> None:
    key = await tenant_key(fleet, {"max_concurrent": 4})
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    slow = {**CHAT, "max_tokens": 40}  # 40 tokens at 1 ms: the first dozen overlap

    async def one(s: aiohttp.ClientSession, edge: str) -> int:
        async with s.post(fleet.edge_url(edge) + "v1/chat/completions", json=slow, headers=headers) as r:
            await r.read()
            return r.status

    for sim in (fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]):
        sim.model = type(sim.model)(ttft_ms=200, per_token_ms=5)  # every request stays a while
    async with aiohttp.ClientSession() as s:
        statuses = Counter(
            await asyncio.gather(*(one(s, e) for e in ("eu-west-1", "us-east-1") for _ in range(6)))
        )
        assert statuses[200] <= 4 and statuses[429] >= 8 and set(statuses) <= {200, 429}, statuses
        assert statuses[200] >= 1
        deadline = time.monotonic() + SLOTS_TTL_S  # idle slots held by the other edge come back on renewal
        while (later := Counter(await asyncio.gather(*(one(s, "eu-west-1") for _ in range(4)))))[200] < 4:
            assert time.monotonic() < deadline, later
        assert later[200] == 4, later  # the whole limit, at one edge, once the first ones finished


async def test_a_concurrency_ramp_waits_for_the_primary_only_at_its_start(fleet: Fleet) -> None:
    """The request that takes an edge's last spare slot has more asked for ahead: a tenant's requests
    arriving one after another, each while the others still run, wait for the primary only the first time
    (before, once every spare + 1 requests)."""
    tenant, key = await fleet.tenant_key({"max_concurrent": 40})  # 2 spare slots
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    sims = [fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]]
    for sim in sims:
        sim.model = type(sim.model)(ttft_ms=5_000, per_token_ms=5)  # every request stays until cancelled
    limiter = fleet.edges["eu-west-1"].edge.limiter
    assert limiter is not None

    async def one(s: aiohttp.ClientSession) -> None:
        async with s.post(
            fleet.edge_url("eu-west-1") + "v1/chat/completions", json=CHAT, headers=headers
        ) as r:
            await r.read()

    async with aiohttp.ClientSession() as s:
        running = []
        try:
            for n in range(1, 11):
                running.append(asyncio.create_task(one(s)))

                async def settled(n: int = n) -> bool:  # at the replicas, and no holding asked for meanwhile
                    slots = limiter.slots.get(tenant)
                    return (
                        sum(len(sim.inflight) for sim in sims) >= n and slots is not None and not slots.asking
                    )

                await wait_for(settled, timeout=5, what=f"{n} requests running")
            waits = await fleet.primary_waits("eu-west-1")
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    assert waits.get("slots") == 1, waits


async def test_a_flood_past_the_concurrency_limit_is_refused_without_a_call_per_request(fleet: Fleet) -> None:
    """Once the primary had no slot for a request, the edge refuses the next ones without asking it again for
    ``SLOTS_RECHECK_S``: 100 requests past a limit of 1 at once cost a call or two, not 100; and the slot,
    once free, serves again."""
    key = (await fleet.tenant_key({"max_concurrent": 1}))[1]
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    sims = [fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]]
    for sim in sims:
        sim.model = type(sim.model)(ttft_ms=5_000, per_token_ms=5)  # the first request stays until cancelled
    url = fleet.edge_url("eu-west-1") + "v1/chat/completions"

    async def status(s: aiohttp.ClientSession) -> int:
        async with s.post(url, json={**CHAT, "max_tokens": 2}, headers=headers) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        holder = asyncio.create_task(status(s))
        try:
            await wait_for(lambda: sum(len(sim.inflight) for sim in sims) == 1, timeout=5, what="1 running")
            before = await asyncio.to_thread(script_calls, fleet)
            started = time.monotonic()
            flood = Counter(await asyncio.gather(*(status(s) for _ in range(100))))
            elapsed = time.monotonic() - started
            asked = await asyncio.to_thread(script_calls, fleet) - before
        finally:
            holder.cancel()
            await asyncio.gather(holder, return_exceptions=True)
        for sim in sims:
            sim.model = type(sim.model)(ttft_ms=1, per_token_ms=1)
        served = []

        async def served_again() -> bool:
            served.append(await status(s))
            return served[-1] == 200

        await wait_for(served_again, timeout=5, what="the freed slot serving")
    print(f"\n100 requests past a concurrency limit of 1: {asked} script calls in {elapsed:.2f} s")
    assert flood == {429: 100}, flood
    # the script calls of every edge (registrations, once a second each, included) while the flood lasted
    assert asked <= 4 * (1 + elapsed) + 1 + elapsed / SLOTS_RECHECK_S and asked < 50, (asked, elapsed)


def script_calls(fleet: Fleet) -> int:
    """How many scripts the primary has run (its ``INFO commandstats``)."""
    r = fleet.primary.client(decode=True)
    try:
        stats = r.info("commandstats")
    finally:
        r.close()
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_a_buffered_answer_is_charged_its_real_usage_not_the_reservation(fleet: Fleet) -> None:
    # no max_tokens: each request reserves ~1,040 tokens (the 1,024 cap), the simulator uses about 12
    key = await tenant_key(fleet, {"tpm": 3_000})  # 50 tokens a second, 1 s of tolerance
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    body = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}]}
    served = 0
    async with aiohttp.ClientSession() as s:

        async def three_served() -> bool:
            nonlocal served
            async with s.post(
                fleet.edge_url("eu-west-1") + "v1/chat/completions", json=body, headers=headers
            ) as r:
                await r.read()
                assert r.status in (200, 429)
                served += r.status == 200
            return served >= 3

        # charged ~12 each, three pass within a few seconds (the rate refills 50 a second); charged the
        # reservation (1,040 tokens, 20 s of the rate), nothing after the first would pass for 20 s
        took = await wait_for(three_served, timeout=5, interval=0.05, what="three answers served")
    print(f"\nthree buffered answers served within {took:.2f} s")


@pytest.mark.slow
async def test_over_a_minute_rpm_and_tpm_hold_within_five_percent_both_ways(fleet: Fleet) -> None:
    """The acceptance measure: a minute through 4 edges in 4 regions, each tenant offered several times its
    limit; what passed is within 5 % of the configured rate, above and below."""
    rpm, tpm, seconds = 1200, 6000, 60.0
    by_requests = await tenant_key(fleet, {"rpm": rpm})
    by_tokens = await tenant_key(fleet, {"tpm": tpm})
    edges = list(fleet.edges)
    started = time.monotonic()
    # clients that back off 50 ms after a refusal still offer up to 160 requests a second per tenant (8 and
    # 6 times the limits), without a refusal spin that took a whole core from the machine the edges share
    # (a minute under CI load then passed 5.1 % below the rate: the edges could not keep up, not the limits)
    requests, tokens = await asyncio.gather(
        drive(fleet, by_requests, seconds, per_edge=2, edges=edges, backoff_s=0.05),
        drive(fleet, by_tokens, seconds, per_edge=2, edges=edges, backoff_s=0.05),
    )
    # requests are offered for ``seconds``; the wall time also holds the last ones' answers (seconds
    # under a loaded CI machine), so "under" is judged on the offered window and "over" on the wall time
    offered, minutes = seconds / 60, (time.monotonic() - started) / 60
    used = tokens[200] * (2 + 2)  # the simulator's usage per request: 2 prompt and 2 completion tokens
    print(
        f"\none minute ({minutes * 60:.1f} s wall), 4 edges: {requests[200]} requests passed for {rpm} rpm "
        f"({requests[200] / (rpm * offered) - 1:+.1%}), "
        f"{used} tokens for {tpm} tpm ({used / (tpm * offered) - 1:+.1%})"
    )
    assert requests[429] > requests[200] and tokens[429] > tokens[200]  # both were offered well over
    assert 0.95 * rpm * offered <= requests[200] <= 1.05 * rpm * minutes, requests
    assert 0.95 * tpm * offered <= used <= 1.05 * tpm * minutes, tokens


# ---- the matrix: never under, never over, under the shipped ACL users, 2 edge processes per region ----

SWEEP_S = 12.0  # each cell's window (every cell of a sweep runs at once, one tenant each)
REGIONS = ("eu-west-1", "us-east-1", "us-west-2", "ap-southeast-1")
Mode = Literal["sequential", "parallel", "flood"]


@dataclass(frozen=True)
class Cell:
    """One tenant's limit, offered at ``load`` times its rate (flood: as fast as ``loops`` per edge process
    go) through the 2 processes of each of ``edges`` regions' edges."""

    limits: dict[str, int]
    edges: int
    mode: Mode
    load: float = 0.0
    tokens: tuple[int, int] | None = None  # answers of varying size: max_tokens drawn in this range
    loops: int = 1  # flood: clients looping on each edge process

    @property
    def name(self) -> str:
        (dim, limit), *_ = self.limits.items()
        return f"{dim} {limit} x{self.load or 'flood'} {self.mode} {self.edges} edge(s)"


@dataclass
class Seen:
    admitted: int = 0
    refused: int = 0
    tokens: int = 0  # usage of the admitted answers
    other: Counter[int] = field(default_factory=Counter)
    elapsed: float = 0.0
    # (when, cost): a request, or its token reservation as sent and the excess refunded as its answer ends
    offered: list[tuple[float, int]] = field(default_factory=list)

    def peak(self, rate: float) -> float:
        """The most the offered cost ran above ``rate`` over any window (the arrivals' own burst): a paced
        client at 0.9x whose requests vary in size (10 to 200 tokens) still has windows above the rate, and
        the reservations of requests in flight count until their answers end."""
        peak, low, total = 0.0, math.inf, 0.0
        for at, cost in sorted(self.offered):
            low = min(low, total - rate * at)  # the lowest point of (offered - rate x time) before this one
            total += cost
            peak = max(peak, total - rate * at - low)
        return peak


@pytest.fixture
async def processes(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        processes=2,
        sim_kwargs={"ttft_ms": 1.0, "per_token_ms": 0.0},
    )
    try:

        async def registered() -> bool:
            limiters = [p.edge.limiter for procs in f.processes.values() for p in procs]
            return all(lim is not None and lim.edges == 8 for lim in limiters)

        await wait_for(registered, timeout=5, what="8 edge processes registered")
        yield f
    finally:
        await f.close()


async def run_cell(fleet: Fleet, cell: Cell, key: str, rng: random.Random) -> Seen:
    urls = [
        p.make_url("/v1/chat/completions")
        for region in REGIONS[: cell.edges]
        for p in fleet.processes[region]
    ]
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    seen = Seen()
    started = time.monotonic()
    deadline = started + SWEEP_S

    async def one(s: aiohttp.ClientSession, url: str) -> None:
        lo, hi = cell.tokens or (2, 2)
        max_tokens = rng.randint(lo, hi)
        body = {**CHAT, "max_tokens": max_tokens}
        tokens = "tpm" in cell.limits
        # the limiter charges a request's reservation (its prompt estimated from the body) as it arrives,
        # and refunds the reservation's excess over the usage when the answer ends
        charged = reservation(body) if tokens else 1
        seen.offered.append((time.monotonic(), charged))
        async with s.post(url, json=body, headers=headers) as r:
            answer = await r.read()
            if tokens:
                seen.offered.append((time.monotonic(), 2 + max_tokens - charged))
            if r.status == 200:
                seen.admitted += 1
                seen.tokens += json.loads(answer)["usage"]["total_tokens"]
            elif r.status == 429:
                seen.refused += 1
            else:
                seen.other[r.status] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        if cell.mode == "flood":

            async def loop(url: str) -> None:
                while time.monotonic() < deadline:
                    await one(s, url)

            await asyncio.gather(*(loop(u) for u in urls for _ in range(cell.loops)))
        else:
            per_request = cell_mean_cost(cell)
            rate = next(iter(cell.limits.values())) / 60 / per_request  # requests a second at the limit
            gap = 1 / (rate * cell.load)
            sent: list[asyncio.Task[None]] = []
            i = 0
            at = started
            while at < deadline:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if cell.mode == "sequential":
                    await one(s, urls[i % len(urls)])
                else:
                    sent.append(asyncio.create_task(one(s, urls[i % len(urls)])))
                i += 1
                # a paced client late by more than a gap (the shared loop stalled) does not fire the backlog
                # at once: that burst would be the load above the rate, not the limiter's error
                at = max(at + gap, time.monotonic())
            await asyncio.gather(*sent)
    seen.elapsed = SWEEP_S  # the window the load was offered in
    return seen


def cell_mean_cost(cell: Cell) -> float:
    """A request's mean cost in the cell's dimension (tokens: 2 prompt tokens + max_tokens)."""
    if "tpm" not in cell.limits:
        return 1.0
    lo, hi = cell.tokens or (2, 2)
    return 2 + (lo + hi) / 2


def check(cell: Cell, seen: Seen, stalled: float = 0.0, longest: float = 0.0) -> list[str]:
    """What the limits promise for ``cell``, broken (empty: kept). ``stalled``: seconds the test's shared
    event loop stood still (nothing was offered, nothing served): the lower bound owes nothing for them;
    ``longest``: its longest stall, whose requests reach the edges together."""
    (dim, limit), *_ = cell.limits.items()
    rate = limit / 60
    got = seen.tokens if dim == "tpm" else seen.admitted
    allowed = rate * seen.elapsed
    owed = rate * max(0.0, seen.elapsed - stalled)
    burst = rate * 1.0 + 1  # the default burst_s: 1 s of the rate (and the permit that starts it)
    if stalled > LEASE_TIMEOUT_S:  # a stall past the lease's socket timeout sends each edge to its local
        burst *= 2  # share for a while, whose buckets start with a burst of their own (the outage mode)
    most = cell_mean_cost(cell) if dim == "tpm" else 1  # one request past the room (a debt)
    if dim == "tpm" and cell.tokens:
        most = 2 + cell.tokens[1]
    broken = []
    if seen.other:
        broken.append(f"answers other than 200/429: {dict(seen.other)}")
    # offered below the rate: no refusal unless the arrivals' own peak above the rate (requests of varying
    # size) took what the burst leaves beside the most the processes may hold leased and idle (two leases
    # each) and what the loop's longest stall delivered at once
    idle = 2 * Bucket(limit, edges=2 * cell.edges).lease_size() * 2 * cell.edges
    room = burst - idle - rate * longest
    if cell.load and cell.load < 1 and seen.refused and seen.peak(rate) < room:
        broken.append(
            f"offered {cell.load}x: {seen.refused} refused at a peak of {seen.peak(rate):.0f} < {room:.0f}"
        )
    if (not cell.load or cell.load > 1) and got < 0.95 * owed:
        broken.append(f"under: {got} < 95 % of {owed:.0f} ({stalled:.1f} s stalled)")
    if got > allowed + burst + most:
        broken.append(f"over: {got} > {allowed:.0f} + burst {burst:.0f} + {most}")
    return broken


STALL_S = 0.1  # a wake-up later than this is a stall of the shared loop (a slow or busy CI machine)


async def loop_lag(out: list[float]) -> None:
    """How late the test's one event loop (clients, edges, simulators alike) wakes a 10 ms timer."""
    while True:
        asked = time.monotonic()
        await asyncio.sleep(0.01)
        out.append(time.monotonic() - asked - 0.01)


async def sweep(fleet: Fleet, cells: list[Cell]) -> None:
    keys = [(await fleet.tenant_key(c.limits, name=f"cell {i}"))[1] for i, c in enumerate(cells)]
    rng = random.Random(24)
    lags: list[float] = []
    watch = asyncio.create_task(loop_lag(lags))
    try:
        results = await asyncio.gather(
            *(run_cell(fleet, c, k, rng) for c, k in zip(cells, keys, strict=True))
        )
    finally:
        watch.cancel()
    broken = []
    stalled = sum(lag for lag in lags if lag > STALL_S)
    lags.sort()
    print(
        f"\nthe test's event loop: lag p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
        f"max {lags[-1] * 1000:.0f} ms, {stalled:.2f} s in stalls over {STALL_S * 1000:.0f} ms"
    )
    for cell, seen in zip(cells, results, strict=True):
        (dim, limit), *_ = cell.limits.items()
        got = seen.tokens if dim == "tpm" else seen.admitted
        print(
            f"{cell.name:<44} {seen.elapsed:5.1f} s  admitted {seen.admitted:5} ({got} {dim[0]}) "
            f"= {got / (limit / 60 * seen.elapsed):6.1%} of the rate, refused {seen.refused}, "
            f"offered peak {seen.peak(limit / 60):.0f} {dim[0]} above the rate"
        )
        broken += [f"{cell.name}: {why}" for why in check(cell, seen, stalled, lags[-1])]
    assert not broken, broken


@pytest.mark.slow
async def test_paced_clients_get_their_rate_never_less_never_more(processes: Fleet) -> None:
    """Sequential and parallel clients offered 0.5x to 4x, rpm 6 to 6,000 and tpm with answers of varying
    size, through 1, 2 and 4 edges of 2 processes each."""
    await sweep(
        processes,
        [
            Cell({"rpm": 6}, 1, "sequential", 1.2),
            Cell({"rpm": 60}, 2, "sequential", 1.5),
            Cell({"rpm": 600}, 4, "parallel", 1.2),
            Cell({"rpm": 600}, 2, "parallel", 0.9),
            Cell({"rpm": 6000}, 4, "parallel", 1.2),
            Cell({"rpm": 3000}, 4, "parallel", 0.5),
            Cell({"tpm": 6000}, 2, "parallel", 1.5, tokens=(1, 60)),
            Cell({"tpm": 60_000}, 4, "parallel", 0.9, tokens=(10, 200)),
        ],
    )


@pytest.mark.slow
async def test_flooding_clients_get_the_rate_never_more(processes: Fleet) -> None:
    """Clients looping as fast as they go on every edge process (1.5x to a thousand times the rate: every
    edge process of the test shares one event loop and two cores, which caps what the flood offers)."""
    await sweep(
        processes,
        [
            Cell({"rpm": 6}, 4, "flood"),
            Cell({"rpm": 600}, 2, "flood", loops=2),
            Cell({"rpm": 6000}, 4, "flood", loops=3),
            Cell({"tpm": 3000}, 4, "flood", tokens=(1, 100)),
        ],
    )


async def test_concurrent_requests_never_exceed_the_limit_across_eight_edge_processes(
    processes: Fleet,
) -> None:
    """24 clients looping through 4 edges of 2 processes each for a tenant limited to 3 in flight: the
    simulators (every replica, sampled on each turn of the loop) never run more than 3 of its requests."""
    fleet, limit = processes, 3
    key = (await fleet.tenant_key({"max_concurrent": limit}))[1]
    sims = [fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]]
    for sim in sims:
        sim.model = type(sim.model)(ttft_ms=40, per_token_ms=2)  # each request stays ~50 ms
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    urls = [p.make_url("/v1/chat/completions") for procs in fleet.processes.values() for p in procs]
    statuses: Counter[int] = Counter()
    most, done = 0, asyncio.Event()

    async def sample() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, sum(len(s.engine.running) + len(s.engine.waiting) for s in sims))
            await asyncio.sleep(0)

    async def loop(s: aiohttp.ClientSession, url: str, until: float) -> None:
        while time.monotonic() < until:
            async with s.post(url, json={**CHAT, "max_tokens": 5}, headers=headers) as r:
                await r.read()
                statuses[r.status] += 1

    sampler = asyncio.create_task(sample())
    until = time.monotonic() + 6.0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(loop(s, u, until) for u in urls for _ in range(3)))
    done.set()
    await sampler
    print(f"\nmax_concurrent {limit}, 8 edge processes: at most {most} in flight; {dict(statuses)}")
    assert set(statuses) == {200, 429}, statuses
    # past the limit is a fault unless an edge lost the primary (then each enforces its own share of 1)
    edges = [p for procs in fleet.processes.values() for p in procs]
    failures = [await edge_counts(p.make_url("/metrics"), "limits_primary_failures", "kind") for p in edges]
    assert most <= limit, (most, failures)
    assert most == limit  # the whole limit was used at once somewhere
