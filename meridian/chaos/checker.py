"""The campaign's checker (pure, no I/O): invariants over a recorded history, each with its verdict and the
first violations it found.

1. intent: every acknowledged dial write is in the final state or was superseded by a later write (the
   writer is sequential: the final weight is the last acknowledged one, or one of the writes after it whose
   answer never came);
2. monotonic: each edge process's applied (epoch, version) never decreases;
3. dial zero: after a dial 0 is acknowledged, no request that starts later than the propagation bound —
   counted from when the edge's store path was whole again — is served by that region, while 0 stands;
4. errors: every request that failed is explained by a fault the design allows to fail it (its edge was
   down, or shedding with a clear answer, or its key was revoked, or the one engine failing it was in the
   only region not dialed out), and no edge answered 500 of its own;
5. revoked and limited: a revoked key is refused for every request that starts past the bound after the
   revocation; a tenant's rpm admits no more than its rate (plus its burst and the edges' leases) in any
   window, outside the primary outages where the design hands each edge its local share;
6. ledger: each tenant's usage ledger holds every answer served (requests and tokens), give or take the
   answers whose rows an edge held when it was killed, or that a wiped primary lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.admission.limits import LEASE_S, OUTAGE_RETRY_S
from meridian.chaos.history import Applied, History, Limit, Request

PROPAGATION_S = 2.0  # a dial reaches every edge within this of the store being reachable (stated bound)
ALLOWED = frozenset({"ok", "limited", "shed"})
CUT_BY_EDGE = frozenset({"connect", "cut", "timeout"})  # what a killed edge does to its clients' requests
STORE_PATH = ("primary-kill", "primary-wipe", "replica-kill", "replica-pause", "controlplane-kill")
# faults on a link; on an edge's link to its replica, on its store path
LINKS = ("link-latency", "link-loss", "link-reset", "link-partition")
ENGINES = ("engine-errors", "engine-cut")  # one engine failing: retried or continued elsewhere if anywhere
ENGINE_FAILED = frozenset({"cut", "http 500", "upstream"})  # what reaches a client with nowhere else to go
RESTARTS = ("edge-kill", "edge-skew")  # faults that kill an edge (a skewed one is killed again at its end)
PRIMARY_LINK = ":primary"  # a link fault's target suffix: an edge's link to the primary (limits, usage)
LIMIT_WINDOW_S = 10.0  # the windows a tenant's admitted requests are counted in


@dataclass
class Verdict:
    invariant: str
    passed: bool
    checked: int  # how many items it looked at
    violations: list[str] = field(default_factory=list)


def check(h: History, edges: Mapping[str, str] | None = None) -> list[Verdict]:
    """Every invariant's verdict. ``edges``: edge -> the region whose replica it reads (itself by default)."""
    return [
        intent(h),
        monotonic(h),
        dial_zero(h, edges or {}),
        errors(h),
        revoked(h, edges or {}),
        limited(h),
        ledger(h),
    ]


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
        on_path = f.kind in STORE_PATH or (f.kind in (*RESTARTS, *LINKS) and f.target == region)
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
            if _accepted(r) and r.start > whole + PROPAGATION_S:
                v.passed = False
                v.violations.append(
                    f"tenant {k.tenant}'s key, revoked at {k.end:.2f} s, was answered {r.status} at edge "
                    f"{r.edge} at {r.start:.2f} s (store path whole from {whole:.2f} s)"
                )
    return v


def _accepted(r: Request) -> bool:
    """The edge took the request's key: not refused 401, not unanswered (0), and not turned away before
    any key was looked at (an edge whose key set is not loaded yet answers 503 api_keys_loading)."""
    return r.status not in (0, 401) and not (r.kind == "shed" and "API keys" in r.detail)


def errors(h: History) -> Verdict:
    v = Verdict("4 only the errors the design allows", True, 0)
    regions = {r.edge for r in h.requests}  # every region has its edge
    revoked_at: dict[str, float] = {}  # from the first time the operator asked
    for k in h.revokes:
        revoked_at[k.tenant] = min(k.start, revoked_at.get(k.tenant, k.start))
    for r in h.requests:
        v.checked += 1
        if r.kind in ALLOWED:
            continue
        if r.tenant in revoked_at and r.end >= revoked_at[r.tenant]:
            if r.status == 401 and r.start >= revoked_at[r.tenant]:
                continue  # its key was revoked: refused, as it must be
            if r.kind == "cut" and "revoked" in r.detail:
                continue  # streaming when its key was revoked: ended with an error event, as designed
        if r.kind in ENGINE_FAILED and _engine_alone(h, r, regions):
            continue  # its engine failed with nowhere else to go (its 500 relayed included)
        if r.status == 500:
            v.passed = False
            v.violations.append(f"edge {r.edge} answered 500 at {r.start:.2f} s")
            continue
        if r.kind in CUT_BY_EDGE and _edge_down(h.faults, r):
            continue
        if r.kind == "cut" and _link_cut(h.faults, r):
            continue
        v.passed = False
        v.violations.append(
            f"{r.kind} (status {r.status}) at edge {r.edge}, {r.start:.2f}-{r.end:.2f} s: "
            f"{_during(h.faults, r) or 'no fault explains it'}" + (f" [{r.detail}]" if r.detail else "")
        )
    return v


def _edge_down(faults: list[Applied], r: Request) -> bool:
    """Its edge was killed (or restarted skewed, and back) while it was in flight or being sent."""
    return any(
        f.kind in RESTARTS and f.target == r.edge and f.start <= r.end and r.start <= f.end + 1.0
        for f in faults
    )


def _link_cut(faults: list[Applied], r: Request) -> bool:
    """Its stream was on a link to a region that was reset or partitioned while it was in flight (the edge
    cannot retry a stream that has begun: the client sees it end with an error event)."""
    return any(
        f.kind in ("link-reset", "link-partition")
        and f.target.partition(":")[0] == r.edge
        and f.target.partition(":")[2] not in ("", "primary")
        and r.start <= f.start <= r.end + 0.5
        for f in faults
    )


def _engine_alone(h: History, r: Request, regions: set[str]) -> bool:
    """A failing engine's answer (its 500, or a stream it broke off) reached the client: allowed only where
    the retry or the continuation had nowhere to go — every other region's dial may have read 0 at the
    edge meanwhile (a dialed-out region takes no failover), so the failing engine's region was the only
    one. (Whether that region had another engine serving, the autoscaler's doing, is not recorded: this
    much is lenient.)"""
    for f in h.faults:
        if f.kind in ENGINES and f.start <= r.end and r.start <= f.end + 0.5:
            if r.kind == "http 500" and r.region != f.target:
                continue  # a 500 the edge made itself is never allowed
            if all(_dialed_out(h, other, r.start, r.end) for other in regions - {f.target}):
                return True
    return False


def _dialed_out(h: History, region: str, start: float, end: float) -> bool:
    """``region``'s dial may have read 0 at an edge at some moment in [start, end]: a 0 was asked before
    ``end``, and no other weight acknowledged since (``PROPAGATION_S``, the stated bound, before
    ``start``)."""
    writes = [w for w in h.writes if w.region == region]
    for i, w in enumerate(writes):
        if w.weight != 0 or w.start > end:
            continue
        after = [x.end + PROPAGATION_S for x in writes[i + 1 :] if x.weight != 0 and x.acked]
        if min(after, default=float("inf")) >= start:
            return True
    return False


def _during(faults: list[Applied], r: Request) -> str:
    return ", ".join(f"{f.kind} {f.target}".strip() for f in faults if f.start <= r.end and r.start <= f.end)


def limited(h: History) -> Verdict:
    """5, limits: the answers served to a tenant that started and ended inside a window of
    ``LIMIT_WINDOW_S`` number at most its rate over the window and its burst, plus one lease per edge and
    one; windows that touch a primary outage (or an edge's link to it cut, plus ``OUTAGE_RETRY_S``) are left
    out: there each edge enforces its local share, by design."""
    v = Verdict(f"5 no tenant served over its rpm in any {LIMIT_WINDOW_S:g} s window", True, 0)
    edges = len({r.edge for r in h.requests}) or 1
    outages = [
        (f.start, f.end + OUTAGE_RETRY_S)
        for f in h.faults
        if f.kind.startswith("primary") or (f.kind in LINKS and f.target.endswith(PRIMARY_LINK))
    ]
    end = max((r.end for r in h.requests), default=0.0)
    for limit in h.limits:
        served = sorted((r.start, r.end) for r in h.requests if r.tenant == limit.tenant and r.kind == "ok")
        bound = _limit_bound(limit, edges)
        a = 0.0
        while a + LIMIT_WINDOW_S <= end:
            b = a + LIMIT_WINDOW_S
            if not any(s < b and a < e for s, e in outages):
                v.checked += 1
                n = sum(1 for s, e in served if a <= s and e <= b)
                if n > bound:
                    v.passed = False
                    v.violations.append(
                        f"tenant {limit.tenant} (rpm {limit.rpm}) was served {n} requests in "
                        f"{a:.0f}-{b:.0f} s (bound {bound:.0f})"
                    )
            a += 1.0
    return v


def _limit_bound(limit: Limit, edges: int) -> float:
    rate = limit.rpm / 60.0
    return rate * (LIMIT_WINDOW_S + limit.burst_s) + edges * max(1.0, rate * LEASE_S) + 1


def ledger(h: History) -> Verdict:
    """6. Each tenant's ledger: the answers it was served that surely reached it at most, and those plus the
    ones that may have (an edge killed holding their rows; a primary wiped while they were on their way;
    streams cut, or served with no usage, at the largest answer's tokens) at least."""
    v = Verdict("6 the usage ledger equals the answers' usage", True, 0)
    for book in h.ledgers:
        mine = [r for r in h.requests if r.tenant == book.tenant]
        cap = max((r.tokens or 0 for r in mine), default=0)
        sure = [0, 0]  # answers, tokens
        maybe = [0, 0]
        for r in mine:
            if r.kind == "ok":
                fate = _fate(h, r)
                if fate == "sure" and r.tokens is not None:
                    sure[0] += 1
                    sure[1] += r.tokens
                elif fate != "out":
                    maybe[0] += 1
                    maybe[1] += r.tokens if r.tokens is not None else cap
            elif r.status in (0, 200, 502, 503, 504):  # may have been admitted and charged its prompt
                maybe[1] += cap
        v.checked += 1
        for what, got, low, high in (
            ("answers", book.served, sure[0], sure[0] + maybe[0]),
            ("tokens", book.tokens, sure[1], sure[1] + maybe[1]),
        ):
            if not low <= got <= high:
                v.passed = False
                v.violations.append(
                    f"tenant {book.tenant}'s ledger holds {got} {what}; its answers say {low} for sure, "
                    f"{high} at most"
                )
    return v


def _fate(h: History, r: Request) -> str:
    """Whether a served answer's row surely reached the ledger ("sure"), surely not ("out": written, then
    its primary wiped), or may have ("maybe")."""
    flushed = _flushed_by(h, r.edge, r.end)
    for f in h.faults:
        killed = (f.start, f.end) if f.kind == "edge-skew" else (f.start,)  # skewed: killed at both ends
        if f.kind in RESTARTS and f.target == r.edge and any(r.end <= k <= flushed for k in killed):
            return "maybe"  # the edge held its row when it was killed
    fate = "sure"
    for f in h.faults:
        if f.kind == "primary-wipe" and r.end < f.start:
            fate = "out" if flushed < f.start else "maybe"
    return fate


def _flushed_by(h: History, edge: str, ended: float) -> float:
    """When a row from an answer that ended at ``ended`` was written at the latest: the next flush after it
    at which the edge's path to the primary is whole (a second of slack each time)."""
    blocked = sorted(
        (f.start, f.end + 1.0)
        for f in h.faults
        if f.kind.startswith("primary") or (f.kind in LINKS and f.target == edge + PRIMARY_LINK)
    )
    at = ended + h.flush_s + 1.0
    for start, end in blocked:
        if start <= at <= end:
            at = end + h.flush_s + 1.0
    return at
