"""Scaling decisions (pure) by table: tolerance, stabilization windows, rate policies, panic, min/max, scale
to zero, the spot/on-demand mix, the load a drained region hands over, and the cost ceilings."""

from __future__ import annotations

import pytest

from controlplane.scaling import PoolMemory, ScaleDecision, absorbed, commit, decide, mix, within_ceilings
from fleet.pools import Autoscaling, PoolKey, PoolSpec, Target

POLICY = Autoscaling(
    tolerance=0.1,
    scale_up_stabilization_s=0,
    scale_down_stabilization_s=300,
    scale_up_percent=100,
    scale_up_replicas=4,
    scale_up_period_s=15,
    scale_down_percent=50,
    scale_down_period_s=60,
    panic_threshold=2.0,
    panic_window_s=60,
)
SPEC = PoolSpec(
    model="m",
    min_replicas=1,
    max_replicas=20,
    target=Target(metric="concurrency", value=10),
    on_demand_base=2,
    max_spot_share=0.7,
    price_on_demand_hour=4.0,
    price_spot_hour=1.5,
)


def step(
    memory: PoolMemory, load: float, now: float, *, spec: PoolSpec = SPEC, held: int = 0
) -> ScaleDecision:
    return decide(spec, POLICY, memory, load=load, held=held, now=now)


@pytest.mark.parametrize(
    ("current", "load", "desired", "why"),
    [
        (4, 40, 4, "within"),  # exactly on target
        (4, 43, 4, "within"),  # +7.5 %: inside the 10 % tolerance band
        (4, 46, 5, "needed"),  # +15 %: one more
        (4, 70, 7, "needed"),  # 1.75x: not yet panic; 7 is within +100 % / +4 this period
        (4, 79, 8, "needed"),  # 1.98x: the rate policy allows max(4 x 2, 4 + 4) = 8
        (1, 9.5, 1, "within"),
        (3, 200, 20, "panic"),  # 6.7x target: panic, straight to what the load needs (capped at max 20)
    ],
)
def test_scale_up_by_table(current: int, load: float, desired: int, why: str) -> None:
    d = step(PoolMemory(current), load, 100.0)
    assert d.desired == desired and why in d.reason


def test_scale_up_is_rate_limited_per_period_of_the_replicas_then() -> None:
    spec = SPEC.model_copy(update={"max_replicas": 20})
    policy = POLICY.model_copy(update={"panic_threshold": 100})
    m = PoolMemory(2)
    seen = []
    for now in (0.0, 5.0, 10.0, 16.0):  # load asks for 18 throughout
        d = decide(spec, policy, m, load=180, held=0, now=now)
        m = commit(d, policy, now)
        seen.append(d.desired)
    assert seen == [6, 6, 6, 12]  # +4 (more than +100 % of 2) in the first 15 s, then +100 % of 6


def test_scale_down_waits_for_the_stabilization_window_and_then_halves_at_most() -> None:
    m = PoolMemory(10)
    d = step(m, 100, 0.0)  # at target
    m = commit(d, POLICY, 0.0)
    for now in (10.0, 100.0, 299.0):  # the load fell to a tenth: the window still holds 10
        d = step(m, 10, now)
        m = commit(d, POLICY, now)
        assert d.desired == 10 and "stabilized" in d.reason
    d = step(m, 10, 301.0)  # the high recommendation left the window: down, by half at most
    assert d.desired == 5
    m = commit(d, POLICY, 301.0)
    assert step(m, 10, 330.0).desired == 5  # the same period: no further
    assert step(m, 10, 362.0).desired == 2  # the next period: half again (HPA rounds down)


def test_oscillating_load_does_not_thrash() -> None:
    """10 <-> high every 30 s for 10 minutes: up at once, never down inside the 300 s window."""
    m, actions = PoolMemory(2), 0
    for i in range(120):
        now = i * 5.0
        load = 20 if (now // 30) % 2 == 0 else 120
        d = step(m, load, now)
        actions += d.desired != m.current
        m = commit(d, POLICY, now)
    assert actions <= 3 and m.current == 12


def test_panic_scales_at_once_and_holds_through_its_window() -> None:
    m = PoolMemory(2)
    d = step(m, 100, 0.0)  # 5x target
    assert d.panic and d.desired == 10
    m = commit(d, POLICY, 0.0)
    policy = POLICY.model_copy(update={"scale_down_stabilization_s": 0})
    quiet = decide(SPEC, policy, m, load=10, held=0, now=30.0)
    assert quiet.desired == 10 and "panic window" in quiet.reason
    after = decide(SPEC, policy, m, load=10, held=0, now=61.0)
    assert after.desired == 5 and not after.panic  # out of the window: down, by half at most


@pytest.mark.parametrize(
    ("current", "load", "held", "desired"),
    [
        (0, 0, 0, 0),  # idle at zero stays at zero
        (0, 0, 3, 1),  # requests wait: the first replica at once
        (0, 35, 0, 4),  # load with nothing yet: what it needs (within the rate policy: +4)
        (1, 0, 0, 0),  # idle, nothing higher in the window: to zero
        (1, 0, 2, 1),  # its first replica is starting (no load seen yet) while requests wait: kept
    ],
)
def test_scale_to_zero(current: int, load: float, held: int, desired: int) -> None:
    spec = SPEC.model_copy(update={"min_replicas": 0, "scale_to_zero": True})
    assert step(PoolMemory(current), load, 0.0, spec=spec, held=held).desired == desired


def test_a_first_replica_for_held_requests_stays_through_the_scale_down_window() -> None:
    """The wake is a recommendation like any other: once the held requests went, the down window still
    remembers it, so the replica that started for them is not switched off before it served."""
    spec = SPEC.model_copy(update={"min_replicas": 0, "scale_to_zero": True})
    woke = step(PoolMemory(0), 0, 0.0, spec=spec, held=1)
    assert woke.desired == 1 and woke.reason == "1 requests wait for a first replica"
    later = step(commit(woke, POLICY, 0.0), 0, 10.0, spec=spec)
    assert later.desired == 1  # within scale_down_stabilization_s (300 s)


def test_absorbed_load_counts_ahead_of_the_pools_own_and_says_so() -> None:
    d = decide(SPEC, POLICY, PoolMemory(2), load=18, absorbed=40, now=0.0)
    assert d.desired == 6  # (18 + 40) / 10 -> 6, a panic (2.9x): at once
    assert "load 18.0 + 40.0 absorbed from drained or down regions" in d.reason


def test_min_and_max_bound_every_decision() -> None:
    assert step(PoolMemory(1), 0, 0.0).desired == 1 and "1..20" in step(PoolMemory(1), 0, 0.0).reason
    assert step(PoolMemory(19), 1000, 0.0).desired == 20


@pytest.mark.parametrize(
    ("desired", "spot_available", "expected"),
    [(1, None, (1, 0)), (2, None, (2, 0)), (10, None, (3, 7)), (10, 4, (6, 4)), (20, 0, (20, 0))],
)
def test_on_demand_baseline_and_spot_burst(
    desired: int, spot_available: int | None, expected: tuple[int, int]
) -> None:
    assert mix(SPEC, desired, spot_available) == expected


def test_a_drained_regions_load_goes_to_the_others_in_proportion() -> None:
    loads = {"us-east-1": 60.0, "eu-west-1": 30.0, "us-west-2": 10.0}
    got = absorbed(loads, {"us-east-1": False, "eu-west-1": True, "us-west-2": True})
    assert got == pytest.approx({"eu-west-1": 45.0, "us-west-2": 15.0})
    assert absorbed(loads, {r: True for r in loads}) == {}


def test_cost_ceilings_are_never_exceeded_and_say_so() -> None:
    a, b = PoolKey("us-east-1", "m"), PoolKey("eu-west-1", "m")
    specs = {a: SPEC, b: SPEC}
    runaway = {k: step(PoolMemory(2), 10_000, 0.0) for k in specs}  # both ask for 20
    held = within_ceilings(
        runaway, specs, region_ceilings={"us-east-1": 30.0, "eu-west-1": None}, global_ceiling=60.0
    )
    for key in specs:
        assert held[key].capped and "cost ceiling" in held[key].reason
    cost = {k: SPEC.cost_hour(*mix(SPEC, held[k].desired)) for k in specs}
    assert cost[a] <= 30.0 and sum(cost.values()) <= 60.0
    assert held[a].desired >= 2 and held[b].desired >= 2  # growth stopped; nothing serving was shed
