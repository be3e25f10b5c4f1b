"""`meridian pressure`'s pure parts: the open-loop schedules (same seed, same arrivals; the offered rate is
the one asked for) and the record's views (latency from the schedule, failures, where clients were served)."""

from __future__ import annotations

import random

import pytest

from meridian.pressure import schedule as sch
from meridian.pressure.record import Outcome, Record
from meridian.pressure.verdict import Verdict


def arrivals(seed: int) -> list[sch.Arrival]:
    rng = random.Random(seed)
    shape = sch.spike(up_at=1.0, up_s=3.0, hold_s=5.0, down_s=2.0, peak=40.0, base=2.0)
    return sch.merged(
        sch.poisson(shape, until=12.0, peak=40.0, rng=rng, population="london", tenant="a"),
        sch.poisson(sch.constant(5.0), until=12.0, peak=5.0, rng=rng, population="new-york", tenant="b"),
        sch.burst(30, at=6.0, population="london", tenant="c", spread_s=0.1, rng=rng),
    )


def test_the_same_seed_offers_the_same_arrivals_and_another_seed_does_not() -> None:
    assert arrivals(7) == arrivals(7)
    assert arrivals(7) != arrivals(8)
    assert sch.digest(arrivals(7)) == sch.digest(arrivals(7)) != sch.digest(arrivals(8))  # the report's
    times = [a.at for a in arrivals(7)]
    assert times == sorted(times)


@pytest.mark.parametrize(
    ("rate", "start", "until", "expected"),
    [
        (sch.constant(50.0), 0.0, 20.0, 1000),
        (sch.ramp(0.0, 10.0, 0.0, 100.0), 0.0, 10.0, 500),  # the area under the ramp
        (sch.square(low=10.0, high=90.0, period_s=4.0), 0.0, 20.0, 1000),
    ],
)
def test_poisson_offers_the_rate_asked_for(rate: sch.Rate, start: float, until: float, expected: int) -> None:
    counts = [
        len(
            sch.poisson(
                rate, start=start, until=until, peak=100.0, rng=random.Random(s), population="p", tenant="t"
            )
        )
        for s in range(20)
    ]
    mean = sum(counts) / len(counts)
    assert abs(mean - expected) < 0.05 * expected


def test_a_spike_rises_holds_and_falls() -> None:
    shape = sch.spike(up_at=1.0, up_s=2.0, hold_s=3.0, down_s=2.0, peak=10.0, base=1.0)
    assert [shape(t) for t in (0.5, 2.0, 3.5, 7.0, 9.0)] == [1.0, 5.5, 10.0, 5.5, 1.0]


def outcome(at: float, kind: str = "ok", region: str = "eu-west-1", ttft: float = 0.1, **kw: str) -> Outcome:
    return Outcome(
        at, kw.get("population", "london"), kw.get("tenant", "a"), 200, kind, region, ttft, ttft + 0.2
    )


def test_the_record_counts_failures_and_where_clients_were_served() -> None:
    rec = Record(
        [
            outcome(0.5),
            outcome(1.5, region="us-east-1"),
            outcome(1.6, "cut", region="us-east-1"),
            outcome(2.5, "shed"),
            outcome(3.5, ttft=2.0),
        ]
    )
    assert rec.failed_share(0, 4) == pytest.approx(2 / 5)
    assert rec.failed_share(0, 4, clear_allowed=True) == pytest.approx(1 / 5)  # shed with a clear answer
    assert rec.served_by("eu-west-1", 0, 4) == pytest.approx(2 / 3)
    assert rec.p(50, 0, 3) == pytest.approx(0.1, rel=0.01)
    assert rec.p(99, 0, 4) == pytest.approx(2.0, rel=0.01)  # HDR: 3 significant digits
    assert rec.p(95, 10, 20) is None
    assert rec.kinds() == {"cut": 1, "ok": 3, "shed": 1}
    assert [row["offered"] for row in rec.per_second(3.0)] == [1.0, 2.0, 1.0, 1.0]


def test_a_scenario_whose_mechanism_never_acted_fails_however_good_its_numbers() -> None:
    v = Verdict("x", "x")
    v.check("p95", "< 1 s", "0.1 s", True)
    assert not v.passed
    v.acted = True
    assert v.passed
    v.check("failures", "0", "1 %", False)
    assert not v.passed
