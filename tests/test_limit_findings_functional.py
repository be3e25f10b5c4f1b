"""One test per way the tenant limits were found to fail as shipped (issue: "never over and never under"),
on a fleet running the shipped Redis ACL users: a lease never overdrawn, a debt carried to the primary, a
reservation the client cannot lower, bad max_tokens refused with the field named, a limit change at once,
an abandoned request letting go of its slot, /v1/models per tenant, the capped priority forwarded, and
partial tenant updates, and requests that arrive together sharing a small lease."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from edge.admission.limiter import Limiter
from fleet.acl import edge_user
from fleet.tenants import Limits, Tenant
from tests.fleet import Fleet, ServerFactory, start_fleet, wait_for
from tests.geodb import CLIENT_IP

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
EDGE = "eu-west-1"


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        regions=("eu-west-1", "us-east-1"),
        sim_kwargs={"ttft_ms": 1.0},
    )
    try:
        yield f
    finally:
        await f.close()


async def post(
    s: aiohttp.ClientSession, fleet: Fleet, key: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, str], Any]:
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"], **headers}
    async with s.post(fleet.edge_url(EDGE) + "v1/chat/completions", json=body, headers=hdrs) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


async def test_a_request_above_the_lease_leases_its_whole_cost_and_its_excess_is_a_debt(fleet: Fleet) -> None:
    # tpm 6,000 (100 a second, 1 s of burst); each request may cost ~1,000 tokens (max_tokens 990)
    _, key = await fleet.tenant_key({"tpm": 6000})
    big = {**CHAT, "max_tokens": 990}
    async with aiohttp.ClientSession() as s:
        first = await post(s, fleet, key, big)
        second = await post(s, fleet, key, big)
    assert first[0] == 200, first
    # the first took ~10 s of the rate (its reservation is settled on its real usage, 992 tokens): the
    # second is refused for that long, where an overdrawn lease let 20 such requests pass in 44 s
    assert second[0] == 429 and second[2]["error"]["code"] == "rate_limit_exceeded", second
    assert 5 <= int(second[1]["Retry-After"]) <= 11, second[1]


async def test_a_huge_prompt_is_charged_in_full_before_the_next_passes(fleet: Fleet) -> None:
    _, key = await fleet.tenant_key({"tpm": 6000})
    huge = {**CHAT, "messages": [{"role": "user", "content": "x" * 40_000}]}  # ~10,000 tokens
    async with aiohttp.ClientSession() as s:
        statuses = [(await post(s, fleet, key, huge))[0] for _ in range(4)]
    assert statuses == [200, 429, 429, 429], statuses  # 100 s of the rate spent by the first


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 1000, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 2**70}, "max_tokens"),
    ],
)
async def test_a_reservation_the_client_lowers_or_breaks_is_400_naming_the_field(
    fleet: Fleet, fields: dict[str, int], param: str
) -> None:
    _, key = await fleet.tenant_key({"tpm": 6000})
    async with aiohttp.ClientSession() as s:
        status, _, body = await post(s, fleet, key, {**CHAT, **fields})
    assert status == 400 and body["error"]["param"] == param, body
    assert body["error"]["type"] == "invalid_request_error"


async def test_the_larger_of_max_tokens_and_max_completion_tokens_is_reserved(fleet: Fleet) -> None:
    _, key = await fleet.tenant_key({"tpm": 6000})  # 100 tokens of burst
    async with aiohttp.ClientSession() as s:
        cheap = {**CHAT, "max_tokens": 1000, "max_completion_tokens": 1}  # vLLM may generate 1,000
        statuses = [(await post(s, fleet, key, cheap))[0] for _ in range(3)]
    assert statuses[1:] == [429, 429], statuses  # reserved 1,000 each: 10 s of the rate, not 1 token


async def test_a_limit_change_takes_effect_at_once(fleet: Fleet) -> None:
    tenant, key = await fleet.tenant_key({"rpm": 5})
    async with aiohttp.ClientSession() as s:
        while (await post(s, fleet, key, CHAT))[0] == 200:
            pass  # spend the burst: rpm 5 then refuses for ~12 s a request
        status, _ = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"limits": {"rpm": 600}})
        assert status == 200
        changed = time.monotonic()

        async def passes() -> bool:
            return (await post(s, fleet, key, CHAT))[0] == 200

        await wait_for(passes, timeout=3, interval=0.05, what="the new rate to admit")
    # the tenants' poll (0.5 s) and the edge's refusal of the old rate (its wait is at most one interval
    # at the new rate once the primary converts the backlog): well under the old 12 s
    assert time.monotonic() - changed < 2.0


async def test_a_partial_update_keeps_the_other_limits_and_null_clears_one(fleet: Fleet) -> None:
    tenant, _ = await fleet.tenant_key({"rpm": 100, "tpm": 5000, "max_concurrent": 3})
    status, body = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"limits": {"rpm": 10}})
    assert status == 200 and body["limits"] == {
        "rpm": 10,
        "tpm": 5000,
        "max_concurrent": 3,
        "burst_s": 1.0,
    }, body
    status, body = await fleet.admin(
        "PATCH", f"/v1/tenants/{tenant}", body={"limits": {"tpm": None, "burst_s": 5}}
    )
    assert status == 200 and body["limits"] == {"rpm": 10, "tpm": None, "max_concurrent": 3, "burst_s": 5.0}
    status, body = await fleet.admin("PATCH", f"/v1/tenants/{tenant}", body={"limits": {"burst_s": 90}})
    assert status == 422 and body["fields"] == ["limits.burst_s"], body


async def test_an_abandoned_request_frees_its_slot_and_its_upstream_attempt(fleet: Fleet) -> None:
    _, key = await fleet.tenant_key({"max_concurrent": 1})
    sims = [fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]]
    for sim in sims:
        sim.model = type(sim.model)(ttft_ms=5000, per_token_ms=1)  # a non-streamed answer 5 s away
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await post(s, fleet, key, CHAT)  # the client gives up

        async def cancelled() -> bool:
            return sum(len(x.engine.running) + len(x.engine.waiting) for x in sims) == 0

        await wait_for(cancelled, timeout=2, what="the abandoned upstream attempt to be cancelled")
        for sim in sims:
            sim.model = type(sim.model)(ttft_ms=1, per_token_ms=1)
        status, _, body = await post(s, fleet, key, CHAT)
    assert status == 200, body  # its slot was let go: the limit of 1 admits the next at once


async def test_regions_receive_the_capped_priority_not_the_clients(fleet: Fleet) -> None:
    _, key = await fleet.tenant_key(name="capped", priority="batch", max_priority="normal")
    async with aiohttp.ClientSession() as s:
        for asked in ("critical", "normal", None):
            extra = {"X-Meridian-Priority": asked} if asked else {}
            assert (await post(s, fleet, key, CHAT, **extra))[0] == 200
    seen = sum((fleet.sim(r, rep).stats.priorities for r in fleet.sims for rep in fleet.sims[r]), Counter())
    assert seen == Counter({"normal": 2, "batch": 1}), seen  # critical capped at normal; default batch


async def test_models_lists_only_what_the_tenant_may_use_and_counts_as_a_request(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, auth=True, catalog=True, regions=("eu-west-1",))
    try:
        models = sorted(f.topology.catalog.models)
        _, key = await f.tenant_key({"rpm": 2}, name="one", models=models[:1])
        hdrs = {"Authorization": f"Bearer {key}"}
        got = []
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(f.edge_url(EDGE) + "v1/models", headers=hdrs) as r:
                    got.append((r.status, await r.json()))
        assert got[0][0] == 200 and [m["id"] for m in got[0][1]["data"]] == models[:1], got[0]
        assert 429 in [status for status, _ in got]  # listing counts against rpm 2 (and its burst)
    finally:
        await f.close()


async def test_revoking_a_key_ends_its_streams_in_flight(fleet: Fleet) -> None:
    tenant, key = await fleet.tenant_key({"rpm": 600})
    _, keys = await fleet.admin("GET", f"/v1/tenants/{tenant}/keys")
    key_id = keys["keys"][0]["id"]
    for sim in (fleet.sim(region, rep) for region in fleet.sims for rep in fleet.sims[region]):
        sim.model = type(sim.model)(ttft_ms=1, per_token_ms=50)  # 400 tokens: a 20 s stream
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    body = {**CHAT, "max_tokens": 400, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(fleet.edge_url(EDGE) + "v1/chat/completions", json=body, headers=hdrs) as r,
    ):
        assert r.status == 200
        await r.content.readline()  # the stream is flowing
        status, _ = await fleet.admin("DELETE", f"/v1/tenants/{tenant}/keys/{key_id}")
        assert status == 204
        revoked = time.monotonic()
        rest = await r.content.read()
        took = time.monotonic() - revoked
    tail = rest.decode().strip().split("\n\n")
    assert '"code": "invalid_api_key"' in tail[-2] and tail[-1] == "data: [DONE]", tail[-2:]
    assert took < 2.0, took  # the tenants' poll (0.5 s), not the 20 s the stream had left


async def test_rate_headers_at_one_edge_tell_what_another_edge_spent(fleet: Fleet) -> None:
    """x-ratelimit-remaining-* come from the primary's word, so an edge that served nothing yet tells what
    the other spent (within a lease): the headers are the tenant's, not the edge's."""
    _, key = await fleet.tenant_key({"rpm": 600, "burst_s": 10.0})  # 10 a second, 100 may come at once
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            status, _, body = await post(s, fleet, key, CHAT)
            assert status == 200, body
        async with s.post(fleet.edge_url("us-east-1") + "v1/chat/completions", json=CHAT, headers=hdrs) as r:
            assert r.status == 200
            remaining = int(r.headers["x-ratelimit-remaining-requests"])
    # 30 spent at eu-west-1 (and a lease of 3 held there and here each, the 31st request), less what the
    # rate refilled meanwhile (10 a second)
    assert 600 - 30 - 3 - 3 - 1 <= remaining <= 600 - 20, remaining


async def test_a_refusal_at_one_edge_follows_what_another_edge_spent(fleet: Fleet) -> None:
    _, key = await fleet.tenant_key({"rpm": 6})  # one every 10 s, one more at once
    hdrs = {"Authorization": f"Bearer {key}", "X-Forwarded-For": CLIENT_IP["london"]}
    async with aiohttp.ClientSession() as s:
        seen = [(await post(s, fleet, key, CHAT))[0] for _ in range(3)]
        assert seen[0] == 200 and seen[-1] == 429, seen
        async with s.post(fleet.edge_url("us-east-1") + "v1/chat/completions", json=CHAT, headers=hdrs) as r:
            body = await r.json()
            assert r.status == 429, body  # the other edge never served this tenant: the primary says no
            assert int(r.headers["Retry-After"]) >= 5 and body["error"]["code"] == "rate_limit_exceeded"


async def test_a_holding_lowered_while_requests_arrive_is_never_granted_twice(fleet: Fleet) -> None:
    """Found by the eight-process test under load: an edge lowering its holding (its renewal, or idle spare
    going back) let requests take the slots it was giving back while the primary answered, and the primary
    then granted those slots to another edge: 5 in flight for a limit of 3."""
    tenant = Tenant(id="t-race", name="race", limits=Limits(max_concurrent=3))
    url = fleet.primary.url_for(edge_user(EDGE))
    a, b = (Limiter(client=aioredis.from_url(url), edges=2) for _ in range(2))
    try:
        tickets = [(await a.enter(tenant))[1] for _ in range(3)]  # edge a holds the whole limit
        for ticket in tickets[1:]:
            assert ticket is not None
            a.leave(ticket)  # one still in use, two idle (not yet enough to give back)
        slots = a.slots[tenant.id]
        assert (slots.held, slots.in_use) == (3, 1)
        lowering = asyncio.create_task(a._hold(tenant.id, slots, 1))  # its renewal: down to what is in use
        await asyncio.sleep(0)  # the lowering call is on its way to the primary
        arrivals = [asyncio.create_task(a.enter(tenant)) for _ in range(2)]  # two requests arrive meanwhile
        await lowering
        admitted_a = sum(ticket is not None for _, ticket in await asyncio.gather(*arrivals))
        admitted_b = sum([(await b.enter(tenant))[1] is not None for _ in range(3)])  # another edge asks
    finally:
        for limiter in (a, b):
            await limiter.client.aclose()
    assert slots.in_use <= slots.held, (slots.in_use, slots.held)
    assert 1 + admitted_a + admitted_b <= 3, (admitted_a, admitted_b)


async def test_requests_arriving_together_on_a_small_lease_are_refused_only_by_the_primary(
    fleet: Fleet,
) -> None:
    """Found by the paced sweep after a stall of the shared loop: a burst at one edge process waited on one
    lease of one permit, the first took it, and the others — after a second shared lease went the same way —
    were refused with the tenant far under its rate and the primary never asked for them."""
    tenant = Tenant(id="t-burst", name="burst", limits=Limits(rpm=600))  # 10 a second, 1 s of burst
    limiter = Limiter(client=aioredis.from_url(fleet.primary.url_for(edge_user(EDGE))), edges=8)
    try:
        assert limiter._bucket(tenant, "requests", 600).lease_size() == 1
        verdicts = await asyncio.gather(*(limiter.admit(tenant, 0) for _ in range(8)))
    finally:
        await limiter.client.aclose()
    assert [v.admitted for v in verdicts] == [True] * 8, [v.refused for v in verdicts]
