"""Budget periods and prices (pure): the UTC day or month a moment falls in, and what tokens cost."""

from __future__ import annotations

from datetime import UTC, datetime

from fleet.models import cost_nusd, per_token_nusd, usd
from fleet.spend import window


def at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[arg-type]


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
