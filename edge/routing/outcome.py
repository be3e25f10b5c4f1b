"""One classification of an upstream attempt's outcome (pure, no I/O): whether another attempt may follow,
whether it counts against the replica's and region's breakers, and what the client gets if it is final.

Every attempt — plain, retry, failover, hedge — goes through ``classify``; nothing else decides
"was this a failure?" (Envoy's ``putResult``: one sink, one classification).

| kind      | what happened                            | retry                   | breaker | client gets     |
|-----------|------------------------------------------|-------------------------|---------|-----------------|
| ok        | a status below 500, but 429              | no                      | no      | the response    |
| throttled | 429: the replica takes no more now       | other replica, region   | no      | it, if final    |
| internal  | 500: the request broke one run           | once: replica, region   | yes     | it, if final    |
| server    | 501, 505 or another non-retryable 5xx    | no                      | yes     | the response    |
| status    | 502, 503 or 504 from the region          | other replica, region   | yes     | it, if final    |
| connect   | refused, reset, unreachable, cut off     | other replica, region   | yes     | 502             |
| timeout   | no headers, or no first event of a stream, in time | other replica, region | yes | 504     |
| error     | a bug in the edge, or no replica to try  | no                      | no      | 502             |
| cut       | broken off after the client got bytes    | no (too late)           | yes     | a cut stream    |
| context   | 400: over the model's context            | a larger-context model  | no      | it, if final    |

Where a retry goes is ``edge.routing.ranking.AttemptPlan``'s: first another replica of the same region (the
fault is usually one replica's), then the next region in order. A 500 is retried once, there too (an engine
that broke answers 500 to everything, and a region may have one serving: the request goes on elsewhere), and
no more (the request itself may break every engine it reaches: a query of death breaks two).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal[
    "ok", "throttled", "internal", "server", "status", "connect", "timeout", "error", "cut", "context"
]
RETRYABLE: frozenset[str] = frozenset({"throttled", "internal", "status", "connect", "timeout"})
FAILURES: frozenset[str] = frozenset({"internal", "server", "status", "connect", "timeout", "cut"})
RETRIED_ONCE: frozenset[str] = frozenset({"internal"})  # after two of these the request stops
MODEL_WIDE: frozenset[str] = frozenset({"context"})  # the model's, not the replica's: no other replica of it

RETRYABLE_STATUS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    status: int | None  # the region's status, when it answered
    retry: bool  # another attempt may follow (before any byte reached the client)
    breaker_failure: bool  # counts against the replica's and region's breakers
    client_status: int  # what the client gets when this outcome is final and there is no response to relay
    detail: str  # for error bodies and span status
    # derived once when made (an answered status's outcome is made once, then read on every request)
    committable: bool = field(init=False)  # the region's answer goes to the client as it is
    failed: bool = field(init=False)  # an error for the client (usage counts it): all but an answer < 400
    label: str = field(init=False)  # the metric label: the status when the region answered, else the kind

    def __post_init__(self) -> None:
        status = self.status
        object.__setattr__(self, "committable", status is not None and not self.retry)
        object.__setattr__(self, "failed", self.kind != "ok" or status is None or status >= 400)
        object.__setattr__(self, "label", str(status) if status is not None else self.kind)


def _make(kind: Kind, status: int | None, detail: str, client_status: int) -> Outcome:
    return Outcome(kind, status, kind in RETRYABLE, kind in FAILURES, client_status, detail)


@functools.lru_cache(maxsize=1024)  # a status is classified once, not per request (statuses are 3 digits)
def answered(status: int) -> Outcome:
    """The region answered with ``status``."""
    if status in RETRYABLE_STATUS:
        return _make("status", status, f"upstream status {status}", status)
    if status == 429:
        return _make("throttled", status, "upstream status 429 (throttled)", status)
    if status == 500:
        return _make("internal", status, "upstream status 500", status)
    if status >= 500:
        return _make("server", status, f"upstream status {status}", status)
    return _make("ok", status, "ok", status)


TIMEOUT = _make("timeout", None, "time to first byte exceeded", 504)
FIRST_TOKEN = _make("timeout", None, "time to first token exceeded", 504)
ERROR = _make("error", None, "internal error in the edge", 502)
NO_REPLICA = _make("error", None, "no replica available in any routable region", 502)


CONTEXT = _make("context", 400, "the prompt and max_tokens exceed the model's context length", 400)


def context_exceeded(body: bytes) -> bool:
    """A 400's body says the request does not fit the model's context (OpenAI's code, vLLM's message)."""
    return b"context_length_exceeded" in body or b"maximum context length" in body


def cut(error_name: str) -> Outcome:
    """The region broke off its answer after the client got bytes (``error_name``: why): too late to retry,
    a failure for the breakers and for usage."""
    return _make("cut", None, f"stream cut: {error_name}", 502)


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
