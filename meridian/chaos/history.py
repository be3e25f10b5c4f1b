"""What a campaign recorded (pure, no I/O): every client request, every admin write with its answer, every
snapshot sample of each edge, every fault applied — as one JSON-lines history the checker reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Request:
    start: float
    end: float
    edge: str  # the edge the client sent it to
    tenant: str
    status: int  # 0: no answer
    kind: str  # the load generator's class: ok, limited, shed, upstream, cut, connect, timeout, http N
    region: str | None  # the region that served it (X-Meridian-Region)
    detail: str = ""  # an error's message
    tokens: int | None = None  # prompt + completion tokens of the answer's usage (None: no usage came)


@dataclass(frozen=True, slots=True)
class Write:
    start: float
    end: float
    region: str
    weight: int
    status: int  # 0: no answer (the control plane was down or the call timed out)

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Revoke:
    """An API key's revocation, with its answer (the key is ``tenant``'s only one)."""

    start: float
    end: float
    tenant: str
    status: int

    @property
    def acked(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    edge: str
    incarnation: int  # the edge process's restart count: a restarted edge starts over
    epoch: int | None
    version: int | None


@dataclass(frozen=True, slots=True)
class Applied:
    """A fault as it was applied (start and end as the campaign saw them)."""

    start: float
    end: float
    kind: str
    target: str


@dataclass(frozen=True, slots=True)
class Limit:
    """A tenant's requests-per-minute limit as the campaign set it."""

    tenant: str
    rpm: int
    burst_s: float


@dataclass(frozen=True, slots=True)
class Ledger:
    """A tenant's usage ledger at the end (GET /v1/tenants/{id}/usage): requests that did not fail, and
    prompt + completion tokens."""

    tenant: str
    served: int
    tokens: int


@dataclass
class History:
    requests: list[Request] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    faults: list[Applied] = field(default_factory=list)
    revokes: list[Revoke] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    ledgers: list[Ledger] = field(default_factory=list)
    flush_s: float = 1.0  # how often each edge writes its usage rows (observation_interval_s)
    final: dict[str, int] = field(default_factory=dict)  # region -> its weight in the store at the end

    def lines(self) -> Iterator[str]:
        for name in KINDS:
            for item in getattr(self, name):
                yield json.dumps({"type": name, **asdict(item)})
        yield json.dumps({"type": "final", "weights": self.final, "flush_s": self.flush_s})

    @classmethod
    def read(cls, lines: Iterable[str]) -> History:
        h = cls()
        for line in lines:
            row = json.loads(line)
            kind = row.pop("type")
            if kind == "final":
                h.final = {k: int(v) for k, v in row["weights"].items()}
                h.flush_s = float(row.get("flush_s", h.flush_s))
            else:
                getattr(h, kind).append(KINDS[kind](**row))
        return h


KINDS: dict[str, Any] = {
    "requests": Request,
    "writes": Write,
    "samples": Sample,
    "faults": Applied,
    "revokes": Revoke,
    "limits": Limit,
    "ledgers": Ledger,
}
