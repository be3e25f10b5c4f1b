"""The fault campaign's pure parts: the seeded schedule, the history's round trip, and the checker — each
invariant passes a good history and fails a crafted bad one (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import dataclasses
import random

from meridian.chaos.checker import (
    PROPAGATION_S,
    check,
    dial_zero,
    errors,
    intent,
    ledger,
    limited,
    monotonic,
    revoked,
)
from meridian.chaos.faults import KINDS, schedule
from meridian.chaos.history import Applied, History, Ledger, Limit, Request, Revoke, Sample, Write
from meridian.chaos.shrink import shrink

EU, US = "eu-west-1", "us-east-1"


def ok(start: float, edge: str = EU, region: str = EU, kind: str = "ok", status: int = 200) -> Request:
    return Request(start, start + 0.3, edge, "steady", status, kind, region, tokens=20)


def good() -> History:
    return History(
        requests=[ok(1.0), ok(2.0, edge=US, region=US), ok(9.0)],
        writes=[Write(1.0, 1.1, US, 0, 200), Write(5.0, 5.1, US, 60, 200), Write(6.0, 8.0, US, 100, 0)],
        samples=[Sample(t, EU, 0, 1, v) for t, v in ((1.0, 3), (2.0, 4), (3.0, 4))],
        faults=[Applied(4.0, 6.0, "controlplane-kill", "")],
        revokes=[Revoke(3.0, 3.1, "gone", 204)],
        limits=[Limit("steady", rpm=60, burst_s=1.0)],
        ledgers=[Ledger("steady", served=3, tokens=60)],
        final={US: 100, EU: 100},
    )


def test_the_same_seed_draws_the_same_faults_inside_the_campaign() -> None:
    a = schedule(random.Random(3), steps=12, duration=60.0, regions=[EU, US])
    assert a == schedule(random.Random(3), steps=12, duration=60.0, regions=[EU, US])
    assert a != schedule(random.Random(4), steps=12, duration=60.0, regions=[EU, US])
    assert all(f.at >= 3.0 and f.end <= 57.0 and f.kind in KINDS for f in a)
    assert [f.at for f in a] == sorted(f.at for f in a)


def test_the_primary_is_never_wiped_while_the_control_plane_restarts() -> None:
    """Seed 201's schedule lost the store's state and the control plane's copy together (a wipe 0.2 s
    before the restarted control plane came up): a loss by design, kept out of campaigns; every other pair
    of kinds still overlaps."""
    seen = set()
    for seed in range(300):
        faults = schedule(random.Random(seed), steps=36, duration=300.0, regions=[EU, US])
        for f in faults:
            for g in faults:
                if f is not g and f.at < g.end + 2.0 and g.at < f.end + 2.0:
                    seen.add(frozenset((f.kind, g.kind)))
    assert frozenset(("primary-wipe", "controlplane-kill")) not in seen
    assert frozenset(("primary-kill", "controlplane-kill")) in seen
    assert frozenset(("primary-wipe", "replica-kill")) in seen


def test_a_history_reads_back_as_written() -> None:
    h = good()
    assert History.read(list(h.lines())) == h


def test_a_good_history_passes_every_invariant() -> None:
    assert [v.passed for v in check(good())] == [True] * 7


def test_a_lost_acknowledged_write_fails_intent() -> None:
    h = good()
    h.final[US] = 0  # the last acknowledged write set 60, the unanswered one after it 100: 0 is lost intent
    v = intent(h)
    assert not v.passed and "final weight 0" in v.violations[0]
    h.final[US] = 60  # the acknowledged one stood: fine
    assert intent(h).passed


def test_a_snapshot_going_backwards_fails_and_a_restart_starts_over() -> None:
    h = good()
    h.samples.append(Sample(4.0, EU, 0, 1, 2))
    v = monotonic(h)
    assert not v.passed and "back to (1, 2)" in v.violations[0]
    h.samples[-1] = Sample(4.0, EU, 1, 1, 2)  # another incarnation: a restarted edge starts over
    assert monotonic(h).passed
    h.samples.append(Sample(5.0, EU, 1, 2, 1))  # a new epoch outranks any version of the old one
    assert monotonic(h).passed


def test_traffic_to_a_region_past_the_bound_after_its_dial_zero_fails() -> None:
    h = good()
    late = 1.1 + PROPAGATION_S + 0.5
    h.requests.append(ok(late, edge=US, region=US))
    v = dial_zero(h, {})
    assert not v.passed and f"{late:.2f} s" in v.violations[0]
    h.requests[-1] = ok(1.1 + PROPAGATION_S - 0.5, edge=US, region=US)  # within the bound
    assert dial_zero(h, {}).passed


def test_the_bound_counts_from_when_the_edges_store_path_is_whole_again() -> None:
    h = good()
    h.writes = h.writes[:1]  # the dial 0 stands to the end
    h.faults.append(Applied(0.5, 3.0, "replica-pause", US))  # US's edge read a frozen replica until 3.0
    h.requests.append(ok(3.0 + PROPAGATION_S - 0.2, edge=US, region=US))
    assert dial_zero(h, {}).passed
    h.requests.append(ok(3.0 + PROPAGATION_S + 0.2, edge=US, region=US))
    assert not dial_zero(h, {}).passed


def test_an_unexplained_error_or_any_500_fails_and_a_killed_edges_cut_is_allowed() -> None:
    h = good()
    h.requests.append(ok(7.0, kind="upstream", status=502))
    v = errors(h)
    assert not v.passed and "no fault explains it" in v.violations[0]
    h = good()
    h.requests.append(ok(7.0, kind="http 500", status=500))
    assert not errors(h).passed
    h = good()
    h.faults.append(Applied(6.9, 8.0, "edge-kill", EU))
    h.requests.append(ok(7.0, kind="cut", status=200))
    h.requests.append(ok(7.5, kind="shed", status=503))  # shed with a clear answer is allowed anyway
    assert errors(h).passed
    h = good()
    h.requests.append(ok(7.0, edge=US, region=US, kind="cut"))  # a stream in flight on a link cut to US
    assert not errors(h).passed
    h.faults.append(Applied(7.2, 8.0, "link-reset", f"{US}:{US}"))
    assert errors(h).passed
    h.requests.append(ok(7.5, edge=US, kind="upstream", status=502))  # not in flight: it should go to EU
    assert not errors(h).passed


def test_a_failing_engines_error_is_allowed_only_where_its_region_was_the_only_one_not_dialed_out() -> None:
    """An engine's 500 or broken-off stream reaches the client only with nowhere else to go: its region the
    last not dialed out (good(): US dialed 0 at 1.0, 60 acknowledged at 5.1, so read by 7.1 at the latest)."""
    for kind, status in (("cut", 200), ("http 500", 500), ("upstream", 502)):
        h = good()
        h.faults.append(Applied(2.0, 4.0, "engine-errors" if status == 500 else "engine-cut", EU))
        h.requests.append(ok(3.0, kind=kind, status=status))  # US dialed out: allowed
        assert errors(h).passed, kind
        h.requests.append(ok(8.0, kind=kind, status=status))  # no engine fault then
        assert not errors(h).passed, kind
        h = good()
        h.faults.append(Applied(7.5, 9.0, "engine-cut", EU))
        h.requests.append(ok(8.0, kind=kind, status=status))  # US serves again: it should have gone there
        assert not errors(h).passed, kind
    h = good()
    h.faults.append(Applied(2.0, 4.0, "engine-errors", EU))
    h.requests.append(ok(3.0, region=US, kind="http 500", status=500))  # not the failing engine's answer
    assert not errors(h).passed


def test_a_revoked_key_accepted_past_the_bound_fails_and_refusals_after_it_are_allowed() -> None:
    h = good()
    refused = Request(3.5, 3.6, EU, "gone", 401, "http 401", None)
    h.requests.append(refused)  # refused after its revocation: allowed, not an error
    streaming = Request(
        2.9, 3.3, EU, "gone", 200, "cut", EU, "The API key was revoked while this answer streamed"
    )
    h.requests.append(streaming)  # streaming when it was revoked: ended with the error event, allowed
    assert revoked(h, {}).passed and errors(h).passed
    h.requests[-1] = dataclasses.replace(streaming, detail="")  # cut with no reason: not allowed
    assert not errors(h).passed
    h.requests.pop()
    late = 3.1 + PROPAGATION_S + 0.5
    h.requests.append(Request(late, late + 0.3, EU, "gone", 200, "ok", EU))
    v = revoked(h, {})
    assert not v.passed and "answered 200" in v.violations[0]
    h.requests[-1] = Request(late, late + 0.3, EU, "gone", 0, "connect", None)  # its edge down: no answer
    assert revoked(h, {}).passed  # not accepted
    loading = "this edge has not loaded its API keys yet (starting): retry, another edge may serve"
    h.requests[-1] = Request(late, late + 0.1, EU, "gone", 503, "shed", None, loading)  # just restarted
    assert revoked(h, {}).passed  # turned away before its key was looked at: not accepted either
    h.requests[-1] = Request(3.1 + PROPAGATION_S - 0.5, 4.0, EU, "gone", 200, "ok", EU)  # within the bound
    assert revoked(h, {}).passed
    h.requests.append(Request(2.0, 2.1, EU, "gone", 401, "http 401", None))  # refused before it was revoked
    assert not errors(h).passed


def test_a_revocation_asked_again_counts_from_the_first_ask_and_is_checked_from_its_acknowledgement() -> None:
    """The operator asks again while the store cannot take the revocation (503): a 401 after the first ask
    is the revocation's (that ask may have landed before its answer was lost), and acceptance is checked
    from the acknowledged one's answer."""
    h = good()
    h.revokes = [Revoke(3.0, 3.1, "gone", 503), Revoke(4.1, 4.2, "gone", 0), Revoke(6.5, 6.6, "gone", 204)]
    h.requests.append(Request(4.5, 4.6, EU, "gone", 401, "http 401", None))
    assert errors(h).passed
    h.requests.append(Request(6.7, 6.8, EU, "gone", 200, "ok", EU))  # within the bound of the acknowledged
    assert revoked(h, {}).passed
    late = 6.6 + PROPAGATION_S + 0.5
    h.requests.append(Request(late, late + 0.3, EU, "gone", 200, "ok", EU))
    assert not revoked(h, {}).passed


def test_a_tenant_served_over_its_rpm_in_a_window_fails_but_not_where_its_edges_had_the_local_share() -> None:
    # rpm 60: 1 a second; over 10 s, 10 + 1 of burst + 1 lease (one edge) + 1 = 13 at most; 30 served
    over = [ok(t / 3) for t in range(3, 36)]
    h = History(requests=over, limits=[Limit("steady", rpm=60, burst_s=1.0)])
    assert not limited(h).passed and "bound 13" in limited(h).violations[0]
    assert limited(History(requests=over[::3], limits=h.limits)).passed  # 11 in 10 s: within
    cut = dataclasses.replace(h, faults=[Applied(5.0, 8.0, "link-partition", f"{EU}:primary")])
    assert limited(cut).checked == 0 and limited(cut).passed  # every window touches the edge's outage


def test_a_ledger_short_of_the_answers_or_over_them_fails_and_a_killed_edges_rows_may_be_missing() -> None:
    h = good()
    assert ledger(h).passed and ledger(h).checked == 1
    short = dataclasses.replace(h, ledgers=[Ledger("steady", served=2, tokens=40)])
    assert not ledger(short).passed and "2 answers" in ledger(short).violations[0]
    double = dataclasses.replace(h, ledgers=[Ledger("steady", served=4, tokens=80)])  # a batch sent twice
    assert not ledger(double).passed
    killed = dataclasses.replace(short, faults=[Applied(9.5, 10.0, "edge-kill", EU)])  # held 9.0's row
    assert ledger(killed).passed
    wiped = dataclasses.replace(
        h, ledgers=[Ledger("steady", served=1, tokens=20)], faults=[Applied(5.0, 6.0, "primary-wipe", "")]
    )
    assert ledger(wiped).passed  # the two answers written before the wipe are gone with it


def test_shrinking_finds_the_faults_that_fail_together_within_its_runs() -> None:
    faults = list(range(12))
    calls: list[list[int]] = []

    def fails(candidate: list[int]) -> bool:
        calls.append(candidate)
        return 3 in candidate and 8 in candidate  # the failure needs both

    found, used = shrink(faults, fails, runs=40)
    assert found == [3, 8] and used == len(calls) <= 40
    assert shrink(faults, lambda c: 5 in c, runs=40)[0] == [5]
    assert shrink(faults, fails, runs=3)[1] == 3  # a bounded search stops at its runs, still failing
    assert fails(shrink(faults, fails, runs=3)[0])
