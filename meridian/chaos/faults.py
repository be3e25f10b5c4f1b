"""The campaign's fault schedule (pure, no I/O; takes the random source): which fault, on what, when and for
how long, drawn from a seed — the same seed, the same schedule."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# kind -> what it is done to
KINDS: dict[str, str] = {
    "primary-kill": "the Redis primary: kill -9, restarted from its AOF after the fault's duration",
    "primary-wipe": "the Redis primary: kill -9, restarted empty (its AOF and snapshot gone)",
    "primary-full": "the Redis primary: its maxmemory set below what it holds, so it refuses every write "
    "(the shipped store never evicts), unset after",
    "replica-kill": "a region's Redis replica: kill -9, restarted",
    "replica-pause": "a region's Redis replica: SIGSTOP (it falls behind), SIGCONT after",
    "edge-kill": "a region's edge: kill -9, restarted",
    "edge-skew": "a region's edge: kill -9, restarted with its clocks 90 s ahead (libfaketime: wall and "
    "monotonic), restarted on true time after (only where libfaketime is installed)",
    "controlplane-kill": "the control plane: kill -9, restarted",
    "region-down": "every simulated replica of a region refuses (down), back after",
    "region-slow": "every simulated replica of a region answers 300 ms late, normal after",
    "engine-errors": "one serving engine (simulated replica) of a region answers vLLM's 500 to every "
    "request, well after",
    "engine-cut": "one serving engine of a region breaks off every stream after its 3rd token (the "
    "connection reset), whole after",
    "link-latency": "a link (an edge's to its Redis replica, the primary or a region's replicas; the control "
    "plane's to the primary): +200 ms each way, through the campaign's TCP fault proxy",
    "link-loss": "a link: 20 % of its segments lost (each held a retransmission timeout, 0.2 s doubling "
    "while lost again, and everything behind it)",
    "link-reset": "a link: every open connection reset at once (the link works again after)",
    "link-partition": "a link: every connection reset and new ones refused for the fault's duration",
}


@dataclass(frozen=True, slots=True)
class Fault:
    at: float  # seconds from the campaign's start
    kind: str
    target: str  # a region's name, or "" for the primary and the control plane
    duration: float

    @property
    def end(self) -> float:
        return self.at + self.duration


def schedule(
    rng: random.Random,
    *,
    steps: int,
    duration: float,
    regions: Sequence[str],
    kinds: Sequence[str] = tuple(KINDS),
    settle_s: float = 3.0,
) -> list[Fault]:
    """``steps`` faults over ``duration`` s (none in the first or the last ``settle_s``), each lasting 1-4 s
    (an edge on a skewed clock 6-12 s, so it serves a while).
    Faults on different things may overlap (a primary restarts while a replica is paused); two on the same
    thing do not (one process is killed once), and no two regions are down at once (then no region could
    serve: allowed, but not what a campaign tests). Nor is the primary wiped while the control plane
    restarts (within ``STATE_LOSS_MARGIN_S``): the store's state and the control plane's copy of it lost
    together is a loss by design — the store starts a new epoch with no tenants or keys, and every key is
    refused until it is issued again (tested on its own: tests/test_durability_functional.py)."""
    out: list[Fault] = []
    for _ in range(steps * 20):
        if len(out) == steps:
            break
        kind = rng.choice(list(kinds))
        if kind.startswith("link"):  # "": the control plane's to the primary; "e": edge e's to its
            # replica; "e:primary": to the primary; "e:r": to region r's simulated replicas
            ends = ["primary", *regions]
            target = rng.choice(["", *regions, *(f"{e}:{end}" for e in regions for end in ends)])
        else:
            target = "" if kind.startswith(("primary", "controlplane")) else rng.choice(list(regions))
        length = (
            rng.uniform(6.0, 12.0) if kind == "edge-skew" else rng.uniform(1.0, 4.0)
        )  # skewed: serves a while
        at = rng.uniform(settle_s, max(settle_s, duration - settle_s - length))
        f = Fault(round(at, 3), kind, target, round(length, 3))
        if not any(_clash(f, g) for g in out):
            out.append(f)
    return sorted(out, key=lambda f: f.at)


def _thing(f: Fault) -> str:
    """What a fault is done to: faults on one thing never overlap."""
    if f.kind.startswith("primary"):
        return "primary"
    if f.kind.startswith(("region", "engine")):
        return "regions"  # one region down, slow or with a failing engine at a time
    if f.kind.startswith("link"):  # a link to a region counts as the region's fault: one region out at a time
        end = f.target.partition(":")[2]
        return "regions" if end not in ("", "primary") else f"link:{f.target}"
    return f"{f.kind.split('-')[0]}:{f.target}"


STATE_LOSS_MARGIN_S = 2.0  # a restarted control plane has its copy within a keeper round of seeding (0.5 s)


def _clash(a: Fault, b: Fault) -> bool:
    if {a.kind, b.kind} == {"primary-wipe", "controlplane-kill"}:
        margin = STATE_LOSS_MARGIN_S
    elif _thing(a) == _thing(b):
        margin = 0.5
    else:
        return False
    return a.at < b.end + margin and b.at < a.end + margin
