"""One classification of an upstream attempt's outcome (pure, no I/O): whether another attempt may follow,
whether it counts against the replica's and region's breakers, and what the client gets if it is final.

Every attempt — plain, retry, failover, hedge — goes through ``classify``; nothing else decides
"was this a failure?" (Envoy's ``putResult``: one sink, one classification).

| kind    | what happened                              | retry | breaker failure | client gets            |
|---------|--------------------------------------------|-------|-----------------|------------------------|
| ok      | a status below 500                         | no    | no              | the response           |
| server  | 500, 501 or another non-retryable 5xx      | no    | yes             | the response           |
| status  | 502, 503 or 504 from the region            | yes   | yes             | the response, if final |
| connect | refused, reset, unreachable, cut off       | yes   | yes             | 502                    |
| timeout | no first byte within time-to-first-byte    | yes   | yes             | 504                    |
| error   | a bug in the edge, or no replica to try    | no    | no              | 502                    |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["ok", "server", "status", "connect", "timeout", "error"]

RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    status: int | None  # the region's status, when it answered
    retry: bool  # another attempt may follow (before any byte reached the client)
    breaker_failure: bool  # counts against the replica's and region's breakers
    client_status: int  # what the client gets when this outcome is final and there is no response to relay
    detail: str  # for error bodies and span status

    @property
    def committable(self) -> bool:
        """The region's answer goes to the client as it is (nothing to retry)."""
        return self.status is not None and not self.retry

    @property
    def label(self) -> str:
        """The metric label: the status when the region answered, else the kind."""
        return str(self.status) if self.status is not None else self.kind


def _make(kind: Kind, status: int | None, detail: str, client_status: int) -> Outcome:
    retry = kind in ("status", "connect", "timeout")
    failure = kind in ("server", "status", "connect", "timeout")
    return Outcome(kind, status, retry, failure, client_status, detail)


_OK: dict[int, Outcome] = {}  # one Outcome per success status: classified once, not per request


def answered(status: int) -> Outcome:
    """The region answered with ``status``."""
    hit = _OK.get(status)
    if hit is not None:
        return hit
    if status in RETRYABLE_STATUS:
        return _make("status", status, f"upstream status {status}", status)
    if status >= 500:
        return _make("server", status, f"upstream status {status}", status)
    out = _OK[status] = _make("ok", status, "ok", status)
    return out


TIMEOUT = _make("timeout", None, "time to first byte exceeded", 504)
ERROR = _make("error", None, "internal error in the edge", 502)
NO_REPLICA = _make("error", None, "no replica available in any routable region", 502)


def connect_failure(error_name: str) -> Outcome:
    """The connection was refused, reset or cut off before the first byte (``error_name``: why)."""
    return _make("connect", None, error_name, 502)


def raised(exc: BaseException) -> Outcome:
    """The attempt raised ``exc`` before its first byte. TimeoutError is an OSError too: it goes first. The
    pool's own errors are ConnectionErrors; anything that is not an OSError is a bug of ours."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, OSError):
        return connect_failure(type(exc).__name__)
    return ERROR
