"""The campaign's checker (pure, no I/O): invariants over a recorded history, each with its verdict and the
first violations it found.

1. intent: every acknowledged dial write is in the final state or was superseded by a later write (the
   writer is sequential: the final weight is the last acknowledged one, or one of the writes after it whose
   answer never came);
2. monotonic: each edge process's applied (epoch, version) never decreases;
3. dial zero: after a dial 0 is acknowledged, no request that starts later than the propagation bound —
   counted from when the edge's store path was whole again — is served by that region, while 0 stands;
4. errors: every request that failed is explained by a fault the design allows to fail it (its edge was
   down, or shedding with a clear answer, or its key was revoked), and no edge answered 500;
5. revoked: a revoked key is refused for every request that starts past the bound after the revocation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meridian.chaos.history import Applied, History, Request

PROPAGATION_S = 2.0  # a dial reaches every edge within this of the store being reachable (stated bound)
ALLOWED = frozenset({"ok", "limited", "shed"})
CUT_BY_EDGE = frozenset({"connect", "cut", "timeout"})  # what a killed edge does to its clients' requests
STORE_PATH = ("primary-kill", "primary-wipe", "replica-kill", "replica-pause", "controlplane-kill")
LINKS = ("link-latency", "link-reset", "link-partition")  # on an edge's link to its replica: its store path


@dataclass
class Verdict:
    invariant: str
    passed: bool
    checked: int  # how many items it looked at
    violations: list[str] = field(default_factory=list)


def check(h: History, edges: Mapping[str, str] | None = None) -> list[Verdict]:
    """Every invariant's verdict. ``edges``: edge -> the region whose replica it reads (itself by default)."""
    return [intent(h), monotonic(h), dial_zero(h, edges or {}), errors(h), revoked(h, edges or {})]


def intent(h: History) -> Verdict:
    v = Verdict("1 no lost operator intent", True, 0)
    for region in sorted({w.region for w in h.writes}):
        writes = sorted((w for w in h.writes if w.region == region), key=lambda w: w.start)
        acked = [i for i, w in enumerate(writes) if w.acked]
        if not acked:
            continue
        v.checked += 1
        last = acked[-1]
        possible = {writes[last].weight} | {w.weight for w in writes[last + 1 :] if w.status == 0}
        final = h.final.get(region)
        if final not in possible:
            v.passed = False
            v.violations.append(
                f"{region}: final weight {final}, but the last acknowledged write (at "
                f"{writes[last].end:.2f} s) set {writes[last].weight} and nothing unanswered after it could "
                f"explain {final}"
            )
    return v


def monotonic(h: History) -> Verdict:
    v = Verdict("2 each edge's snapshot never goes backwards", True, 0)
    last: dict[tuple[str, int], tuple[int, int, float]] = {}
    for s in sorted(h.samples, key=lambda s: s.at):
        if s.epoch is None or s.version is None:
            continue
        v.checked += 1
        key = (s.edge, s.incarnation)
        prev = last.get(key)
        if prev is not None and (s.epoch, s.version) < prev[:2]:
            v.passed = False
            v.violations.append(
                f"edge {s.edge} went from ({prev[0]}, {prev[1]}) at {prev[2]:.2f} s back to "
                f"({s.epoch}, {s.version}) at {s.at:.2f} s"
            )
        last[key] = (s.epoch, s.version, s.at)
    return v


def dial_zero(h: History, edges: Mapping[str, str]) -> Verdict:
    v = Verdict(f"3 no traffic to a region {PROPAGATION_S:g} s after its dial 0", True, 0)
    for region in sorted({w.region for w in h.writes}):
        writes = sorted((w for w in h.writes if w.region == region), key=lambda w: w.start)
        for i, w in enumerate(writes):
            if not (w.acked and w.weight == 0):
                continue
            nxt = (
                writes[i + 1].start if i + 1 < len(writes) else float("inf")
            )  # 0 stands until the next write
            for r in h.requests:
                if not (w.end < r.start < nxt):
                    continue
                v.checked += 1  # every request that started while the dial stood at 0
                if r.region != region:
                    continue
                whole = _store_whole_after(h.faults, w.end, edges.get(r.edge, r.edge))
                if r.start > whole + PROPAGATION_S:
                    v.passed = False
                    v.violations.append(
                        f"a request to edge {r.edge} at {r.start:.2f} s was served by {region}, whose dial 0 "
                        f"was acknowledged at {w.end:.2f} s (store path whole from {whole:.2f} s)"
                    )
    return v


def _store_whole_after(faults: list[Applied], since: float, region: str) -> float:
    """When ``region``'s edge's path to the store was last restored, counting faults that overlap
    [since, ...) in a chain (a fault starting while another is on extends the outage)."""
    whole = since
    for f in sorted(faults, key=lambda f: f.start):
        on_path = f.kind in STORE_PATH or (f.kind in ("edge-kill", *LINKS) and f.target == region)
        if not on_path or (f.kind.startswith("replica") and f.target != region):
            continue
        if f.start <= whole and f.end > whole:
            whole = f.end
    return whole


def revoked(h: History, edges: Mapping[str, str]) -> Verdict:
    """5. A revoked key is refused (401) for every request that starts later than the propagation bound
    after its revocation was acknowledged (counted from when the edge's store path was whole again)."""
    v = Verdict(f"5 no revoked key accepted {PROPAGATION_S:g} s after its revocation", True, 0)
    for k in (k for k in h.revokes if k.acked):
        for r in h.requests:
            if r.tenant != k.tenant or r.start <= k.end:
                continue
            v.checked += 1
            whole = _store_whole_after(h.faults, k.end, edges.get(r.edge, r.edge))
            if r.status != 401 and r.start > whole + PROPAGATION_S:
                v.passed = False
                v.violations.append(
                    f"tenant {k.tenant}'s key, revoked at {k.end:.2f} s, was answered {r.status} at edge "
                    f"{r.edge} at {r.start:.2f} s (store path whole from {whole:.2f} s)"
                )
    return v


def errors(h: History) -> Verdict:
    v = Verdict("4 only the errors the design allows", True, 0)
    revoked_at = {k.tenant: k.start for k in h.revokes}
    for r in h.requests:
        v.checked += 1
        if r.kind in ALLOWED:
            continue
        if r.status == 401 and r.tenant in revoked_at and r.start >= revoked_at[r.tenant]:
            continue  # its key was revoked: refused, as it must be
        if r.status == 500:
            v.passed = False
            v.violations.append(f"edge {r.edge} answered 500 at {r.start:.2f} s")
            continue
        if r.kind in CUT_BY_EDGE and _edge_down(h.faults, r):
            continue
        v.passed = False
        v.violations.append(
            f"{r.kind} (status {r.status}) at edge {r.edge}, {r.start:.2f}-{r.end:.2f} s: "
            f"{_during(h.faults, r) or 'no fault explains it'}" + (f" [{r.detail}]" if r.detail else "")
        )
    return v


def _edge_down(faults: list[Applied], r: Request) -> bool:
    return any(
        f.kind == "edge-kill" and f.target == r.edge and f.start <= r.end and r.start <= f.end + 1.0
        for f in faults
    )


def _during(faults: list[Applied], r: Request) -> str:
    return ", ".join(f"{f.kind} {f.target}".strip() for f in faults if f.start <= r.end and r.start <= f.end)
