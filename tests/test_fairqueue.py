"""Who goes next while a pool is saturated (pure): bands in priority order, deficit round-robin between
tenants within a band (on token cost, with weights), bounded size and wait per band."""

from __future__ import annotations

from collections import Counter

import pytest

from edge.admission.fairqueue import BandLimits, FairQueue, next_cap
from edge.routing.replicas import PoolLoad
from fleet.tenants import Priority

BANDS: dict[Priority, BandLimits] = {
    "critical": BandLimits(size=100, wait_s=10.0),
    "normal": BandLimits(size=100, wait_s=5.0),
    "batch": BandLimits(size=3, wait_s=2.0),
}


def push(q: FairQueue[str], item: str, tenant: str = "t", band: Priority = "normal", cost: int = 1) -> bool:
    waiter, dropped = q.push(item, tenant=tenant, band=band, cost=cost, now=0.0)
    assert dropped is None
    return waiter is not None


def drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (w := q.pop()) is not None:
        out.append(w.item)
    return out


def test_bands_go_in_priority_order_and_fifo_within_a_tenant() -> None:
    q: FairQueue[str] = FairQueue(BANDS)
    for item, band in [
        ("b1", "batch"),
        ("n1", "normal"),
        ("c1", "critical"),
        ("b2", "batch"),
        ("n2", "normal"),
    ]:
        assert push(q, item, "t", band, 100)  # type: ignore[arg-type]
    assert drain(q) == ["c1", "n1", "n2", "b1", "b2"]


def test_a_tenant_with_a_long_queue_does_not_hold_back_the_others() -> None:
    q: FairQueue[str] = FairQueue(BANDS)
    for i in range(60):
        q.push(f"noisy{i}", tenant="noisy", band="normal", cost=1024, now=0.0)
    for tenant in ("a", "b"):
        for i in range(3):
            q.push(f"{tenant}{i}", tenant=tenant, band="normal", cost=1024, now=0.0)
    first = drain(q)[:9]
    assert Counter(x.rstrip("0123456789") for x in first) == {"noisy": 3, "a": 3, "b": 3}  # turns alternate


def test_turns_are_shared_by_tokens_not_by_requests() -> None:
    q: FairQueue[str] = FairQueue(BANDS, quantum=1024)
    for i in range(40):
        q.push(f"big{i}", tenant="big", band="normal", cost=4096, now=0.0)  # 4 quanta each
        q.push(f"small{i}", tenant="small", band="normal", cost=1024, now=0.0)
    first = Counter(x.rstrip("0123456789") for x in drain(q)[:25])
    assert first["small"] == 20 and first["big"] == 5  # equal tokens: 4 small requests per big one


def test_weights_scale_a_tenants_share() -> None:
    q: FairQueue[str] = FairQueue(BANDS, weights={"gold": 2.0})
    for i in range(40):
        q.push(f"gold{i}", tenant="gold", band="normal", cost=1024, now=0.0)
        q.push(f"std{i}", tenant="std", band="normal", cost=1024, now=0.0)
    first = Counter(x.rstrip("0123456789") for x in drain(q)[:30])
    assert first == {"gold": 20, "std": 10}


def test_a_full_band_sheds_the_flooding_tenants_newest_not_the_newcomer() -> None:
    q: FairQueue[str] = FairQueue(BANDS)  # batch holds 3
    assert all(push(q, f"noisy{i}", "noisy", "batch") for i in range(3))
    waiter, dropped = q.push("quiet0", tenant="quiet", band="batch", cost=1, now=0.0)
    assert waiter is not None and dropped is not None and dropped.item == "noisy2"
    waiter, dropped = q.push("noisy3", tenant="noisy", band="batch", cost=1, now=0.0)
    assert waiter is None and dropped is None  # the flooding tenant sheds its own newcomer
    waiter, dropped = q.push("quiet1", tenant="quiet", band="batch", cost=1, now=0.0)
    assert waiter is None and dropped is None  # even: 2 and 1 would become 1 and 2, no gain
    assert push(q, "c", "t", "critical")  # other bands still take
    assert len(q) == 4 and sorted(drain(q)) == ["c", "noisy0", "noisy1", "quiet0"]


@pytest.mark.parametrize(
    ("now", "expired"),
    [(1.9, []), (2.5, ["b"]), (5.5, ["n", "b"]), (10.5, ["c", "n", "b"])],
)
def test_each_band_has_its_own_wait_and_batch_is_shed_first(now: float, expired: list[str]) -> None:
    q: FairQueue[str] = FairQueue(BANDS)
    for item, band in (("c", "critical"), ("n", "normal"), ("b", "batch")):
        q.push(item, tenant="t", band=band, cost=1, now=0.0)  # type: ignore[arg-type]
    assert [w.item for w in q.expired(now)] == expired
    assert len(q) == 3 - len(expired)


def test_a_request_whose_client_left_is_taken_out() -> None:
    q: FairQueue[str] = FairQueue(BANDS)
    ws = [q.push(f"x{i}", tenant="t", band="normal", cost=1, now=0.0)[0] for i in range(3)]
    assert ws[1] is not None and q.remove(ws[1])
    assert not q.remove(ws[1])
    assert drain(q) == ["x0", "x2"]


def test_an_idle_tenant_saves_no_credit_for_later() -> None:
    q: FairQueue[str] = FairQueue(BANDS, quantum=1024)
    q.push("a0", tenant="a", band="normal", cost=1, now=0.0)
    assert drain(q) == ["a0"]
    for i in range(4):
        q.push(f"a{i}", tenant="a", band="normal", cost=1024, now=0.0)
        q.push(f"b{i}", tenant="b", band="normal", cost=1024, now=0.0)
    assert [x[0] for x in drain(q)[:4]] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])


def load(saturated: bool, running: float = 8, waiting: float = 40, replicas: int = 2) -> PoolLoad:
    return PoolLoad(saturated, running, waiting, replicas)


@pytest.mark.parametrize(
    ("cap", "inflight", "pool", "held", "expected"),
    [
        (None, 10, None, False, None),  # no fresh signals: no ceiling
        (None, 10, load(False), False, None),  # room: no ceiling
        (None, 48, load(True), False, 16),  # all the load is this edge's: run 8 + wait 4 per replica
        (None, 12, load(True), False, 4),  # a quarter of the load: a quarter of that
        (None, 0, load(True), False, 1),  # other edges saturate it: one at a time from here
        (20, 48, load(True), True, 16),  # saturation lasts: the ceiling only comes down ...
        (6, 48, load(True), True, 6),  # ... never up
        (8, 8, load(False, waiting=2), True, 12),  # room while requests are held: up to the fair ceiling
        (16, 16, load(False, waiting=8), True, 17),  # (by one at least)
        (8, 8, load(False), False, None),  # room and nothing held: the ceiling goes
        (8, 8, None, True, 10),  # signals gone stale while requests are held: up by a quarter
        (8, 8, None, False, None),
    ],
)
def test_the_ceiling_is_this_edges_share_under_the_threshold_and_rises_in_steps(
    cap: int | None, inflight: int, pool: PoolLoad | None, held: bool, expected: int | None
) -> None:
    assert next_cap(cap, inflight, pool, max_waiting=5, held=held) == expected
