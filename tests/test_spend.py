"""Budget periods and prices (pure): the UTC day or month a moment falls in, and what tokens cost."""

from __future__ import annotations

from datetime import UTC, datetime

from fleet.models import cost_nusd, per_token_nusd, usd
from fleet.spend import PURSE_IDLE_S, PURSE_S, REFUSAL_S, Purse, window


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_a_day_ends_at_the_next_utc_midnight_and_a_month_at_its_last_day() -> None:
    assert window("day", at(2026, 12, 6, 23, 59, 59)) == window("day", at(2026, 12, 6))
    assert window("day", at(2026, 12, 6, 5)).ends_at == at(2026, 12, 7)
    assert window("day", at(2026, 12, 6)).id != window("day", at(2026, 12, 7)).id
    assert window("month", at(2026, 2, 28, 12)).ends_at == at(2026, 3, 1)
    assert window("month", at(2028, 2, 29)).ends_at == at(2028, 3, 1)  # a leap year's February
    assert window("month", at(2026, 12, 31, 23)).ends_at == at(2027, 1, 1)


def test_prices_are_exact_in_nano_dollars() -> None:
    assert per_token_nusd(0.15) == 150 and per_token_nusd(0.075) == 75
    # 1 million prompt tokens at $0.10 and 1 million completion tokens at $0.20: $0.30 exactly
    assert usd(cost_nusd(1_000_000, 1_000_000, 0.10, 0.20)) == 0.30


def test_a_purse_holds_whole_requests_within_half_its_share_and_settles_real_costs() -> None:
    p = Purse(budget=1000)
    assert p.ask(100, edges=4) == (100, 100, 100)  # share 250, half of it 125: one whole request
    p.granted(100, spent=0, held_all=100)
    assert p.left == 900 and p.take(100, now=0.0) and not p.take(1, now=0.0)
    assert p.ask(100, edges=1) == (400, 100, 100)  # 450 of room: a purse of 4 requests
    p.settle(100, 60, now=1.0)  # reserved 100, cost 60: 40 free again, 60 owed to the period's spend
    assert p.free == 40 and p.due(now=1.0)
    due = p.settlement(now=1.5)  # in use a moment ago: the free 40 stays
    assert (due.release, due.paid) == (60, 60)
    p.settled(due)
    assert (p.held, p.owed, p.free) == (40, 0, 40)
    idle = p.settlement(now=1.0 + PURSE_IDLE_S)  # idle: the free rest goes back too
    assert (idle.release, idle.paid) == (40, 0)


def test_a_refusal_is_remembered_briefly_and_the_outage_share_is_of_what_was_left() -> None:
    p = Purse(budget=1000)
    p.granted(0, spent=950, held_all=0, need=100, now=10.0)
    assert p.refused(100, now=10.1) and not p.refused(40, now=10.1)  # a smaller request may still fit
    assert not p.refused(100, now=10.0 + REFUSAL_S)
    assert p.take_share(25, edges=2, now=11.0) and not p.take_share(1, edges=2, now=11.0)  # 50 / 2
    p.settle(25, 20, now=12.0, share=True)
    due = p.settlement(now=12.0)
    assert (due.release, due.paid) == (0, 20)  # never reserved on the primary: paid, nothing let go


def test_a_purse_in_use_is_topped_up_ahead_to_two_seconds_of_its_reserving() -> None:
    p = Purse(budget=10**9)
    p.granted(1000, spent=0, held_all=1000)
    assert p.take(100, now=0.0) and p.ahead(edges=2, now=0.05) == 0  # 900 free: more than 4 requests
    assert all(p.take(100, now=0.1 * i) for i in range(1, 9))  # 900 reserved in the first second ...
    assert p.take(100, now=1.0) and p.rate == 900.0  # ... known when the next take closes its window
    p.settle(100, 100, now=1.0)
    assert p.free == 0  # held 1000: 900 in use, 100 owed
    assert p.ahead(edges=2, now=1.0) == 1800  # back up to 2 s of 900 a second
    assert p.ahead(edges=2, now=1.0 + PURSE_S) == 0  # unused for a second: left to go back idle
    p.granted(0, spent=10**9 - 3000, held_all=1000, need=100, now=1.0)
    assert p.ahead(edges=2, now=1.0) == 0  # refused a moment ago
    assert p.ahead(edges=2, now=1.0 + REFUSAL_S) == 0  # and 2,000 left: 1,800 is above half a share of it
