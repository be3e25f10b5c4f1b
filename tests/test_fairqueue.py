"""Who goes next while a pool is saturated (pure): bands in priority order, deficit round-robin between
tenants within a band (on token cost, with weights), bounded size and wait per band."""

from __future__ import annotations

from collections import Counter

import pytest

from edge.fairqueue import BandLimits, FairQueue
from fleet.tenants import Priority

BANDS: dict[Priority, BandLimits] = {
    "critical": BandLimits(size=100, wait_s=10.0),
    "normal": BandLimits(size=100, wait_s=5.0),
    "batch": BandLimits(size=3, wait_s=2.0),
}


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
        assert q.push(item, tenant="t", band=band, cost=100, now=0.0) is not None  # type: ignore[arg-type]
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


def test_a_full_band_refuses_and_other_bands_still_take() -> None:
    q: FairQueue[str] = FairQueue(BANDS)
    assert all(q.push(f"b{i}", tenant="t", band="batch", cost=1, now=0.0) for i in range(3))
    assert q.push("b3", tenant="other", band="batch", cost=1, now=0.0) is None
    assert q.push("c", tenant="t", band="critical", cost=1, now=0.0) is not None
    assert len(q) == 4 and q.depth("batch") == 3


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
    ws = [q.push(f"x{i}", tenant="t", band="normal", cost=1, now=0.0) for i in range(3)]
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
