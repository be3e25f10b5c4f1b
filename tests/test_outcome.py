"""The one classification of an attempt's outcome (``edge.routing.outcome``), as a table: what an attempt
that raised, broke off or answered means for retries, the breakers, the client and usage."""

from __future__ import annotations

import pytest

from edge.routing import outcome

# (outcome, kind, retry, breaker failure, client status, failed for usage)
ROWS = [
    (outcome.answered(200), "ok", False, False, 200, False),
    (outcome.answered(404), "ok", False, False, 404, True),  # the region's own refusal: an error for usage
    (outcome.answered(429), "throttled", True, False, 429, True),
    (outcome.answered(500), "internal", True, True, 500, True),
    (outcome.answered(503), "status", True, True, 503, True),
    (outcome.answered(501), "server", False, True, 501, True),
    (outcome.raised(TimeoutError()), "timeout", True, True, 504, True),
    (outcome.raised(ConnectionResetError()), "connect", True, True, 502, True),
    (outcome.raised(ConnectionRefusedError()), "connect", True, True, 502, True),
    (outcome.raised(KeyError("bug")), "error", False, False, 502, True),  # ours: not the region's fault
    (outcome.NO_REPLICA, "error", False, False, 502, True),
    (outcome.cut("ClientPayloadError"), "cut", False, True, 502, True),  # too late to retry, still a failure
]


@pytest.mark.parametrize(("o", "kind", "retry", "breaker", "client", "failed"), ROWS)
def test_the_outcome_table(
    o: outcome.Outcome, kind: str, retry: bool, breaker: bool, client: int, failed: bool
) -> None:
    assert (o.kind, o.retry, o.breaker_failure, o.client_status, o.failed) == (
        kind,
        retry,
        breaker,
        client,
        failed,
    )


def test_an_answer_is_classified_once_per_status() -> None:
    assert outcome.answered(200) is outcome.answered(200)
    assert outcome.answered(200).label == "200" and outcome.raised(TimeoutError()).label == "timeout"
