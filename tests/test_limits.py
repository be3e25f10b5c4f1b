"""The edge's view of a tenant limit (pure): leases spent locally, asked for ahead, given back when unused;
the local share while the primary is unreachable; the token reservation."""

from __future__ import annotations

from edge.admission.limits import LEASE_TTL_S, SLOTS_RECHECK_S, Bucket, Slots, prompt_tokens, reservation
from fleet.episode import Episode


def test_a_lease_is_spent_locally_asked_for_ahead_and_dropped_when_stale() -> None:
    b = Bucket(limit=1200)  # 20 a second: a lease is 5
    assert b.lease_size() == 5 and b.needs_lease(0.0) and not b.take(1, 0.0)
    b.granted(5, 0, 0.0, now=0.0)
    assert [b.take(1, 0.1) for _ in range(3)] == [True, True, True] and b.needs_lease(0.1)  # 2 left < 5/2
    b.asking = True
    assert not b.needs_lease(0.1)  # one lease request at a time
    b.granted(0, 0, 0.5, now=0.2)  # Redis: none left for 0.5 s
    assert b.take(1, 0.3) and b.take(1, 0.3) and not b.take(1, 0.3)
    assert not b.needs_lease(0.6) and b.needs_lease(0.7) and abs(b.retry_after(0.3) - 0.4) < 1e-9
    b.granted(0, 0, 0.5, now=0.9, asked=0.2)  # the answer to a question asked at 0.2, read late
    assert b.needs_lease(0.9)  # the wait ran from the asking (over at 0.7), not from the reading (1.4)
    b.granted(5, 0, 0.0, now=1.0)
    later = 1.0 + LEASE_TTL_S + 0.1
    assert not b.take(1, later) and b.carry(later) == -5  # a lease unused this long goes back whole


def test_a_lease_in_use_never_goes_stale_however_old_and_an_unused_one_does() -> None:
    b = Bucket(limit=600_000)  # a lease of 2,500: far more than a lone client spends in LEASE_TTL_S
    b.granted(b.lease, 0, 0.0, now=0.0)
    for t in range(1, 11):  # one request a second for 10 s: the lease is old, never unused for long
        assert b.take(1, float(t)) and not b.stale(float(t)) and not b.needs_lease(float(t))
    idle = 10.0 + LEASE_TTL_S + 0.1
    assert b.stale(idle) and not b.take(1, idle) and b.carry(idle) == -(b.lease - 10)  # unused: it goes back
    assert b.asked(0, idle) == 0 and b.asked(3, idle) == b.lease  # alone, unless a request needs permits


def test_a_lease_is_never_overdrawn_and_a_debt_is_never_forgiven() -> None:
    b = Bucket(limit=6000)  # 100 tokens a second: a lease is 25
    b.granted(25, 0, 0.0, now=0.0)
    assert not b.take(1000, 0.0) and b.held == 25  # a request costing more than is held spends nothing ...
    assert b.shortfall(1000, 0.0) == 975  # ... it leases what is missing first
    b.granted(975, 0, 0.0, now=0.0)
    assert b.take(1000, 0.0) and b.held == 0
    b.refund(200 - 700)  # settled: it used 700 tokens where 200 were reserved
    assert b.held == -500 and b.carry(0.0) == 500 and b.needs_lease(0.0)
    assert not b.take(1, 100.0) and b.carry(100.0) == 500  # a debt is never dropped
    b.granted(0, 500, 3.0, now=100.0)  # the primary took the debt (and had no room for more)
    assert b.held == 0 and b.carry(100.1) == 0 and not b.needs_lease(100.1)
    b.granted(1000, 0, 0.0, now=101.0)
    assert b.take(1000, 101.0)
    b.refund(1000 - 12)  # used 12 of 1,000 reserved: what a lease holds is kept, the rest goes back
    assert b.carry(101.0) == -(988 - 25) and b.needs_lease(101.0)
    b.granted(0, b.carry(101.0), 0.0, now=101.0)
    assert b.held == 25 and b.carry(101.0) == 0


def test_what_every_process_holds_idle_leaves_half_the_burst_to_the_arrivals() -> None:
    """Leased permits not yet spent are charged at the primary: were the processes' idle leases to fill the
    burst, a process running short would be refused while the tenant is under its rate."""
    for edges in (1, 2, 4, 8, 16, 32):
        b = Bucket(limit=60_000, edges=edges)  # 1,000 tokens a second, 1 s of burst
        held = 0.0
        for _ in range(200):  # one process: leases asked for at half of one, refunds of 7 tokens kept
            if b.needs_lease(0.0) and not b.carry(0.0):
                b.granted(b.lease_size(), 0, 0.0, now=0.0)
            b.refund(7)
            if b.carry(0.0):
                b.granted(0, b.carry(0.0), 0.0, now=0.0)
            held = max(held, b.held)
        assert held <= 2 * b.lease_size()
        assert edges * held <= 0.5 * 1000 + 2 * edges, (edges, b.lease_size())  # ceil: a permit each


def test_the_local_share_is_the_limit_over_the_edges() -> None:
    b = Bucket(limit=2400)  # 40 a second; 4 edges: 10 a second each, 1 s of tolerance
    passed = sum(b.local_share(1, t / 1000, edges=4) for t in range(0, 3000, 5))  # 200 a second offered
    assert 38 <= passed <= 41  # 10 a second for 3 s, plus the tolerance


def test_a_requests_token_reservation() -> None:
    assert prompt_tokens(400) == 100 and prompt_tokens(0) == 1
    assert reservation(prompt_chars=400, max_tokens=50, context_length=8192, cap=1024) == 150
    # no max_tokens: what the context leaves after the prompt, at most the cap
    assert reservation(prompt_chars=400, max_tokens=None, context_length=8192, cap=1024) == 100 + 1024
    assert reservation(prompt_chars=32_000, max_tokens=None, context_length=8192, cap=1024) == 8000 + 192
    assert reservation(prompt_chars=40_000, max_tokens=None, context_length=8192, cap=1024) == 10_000 + 1
    assert reservation(prompt_chars=0, max_tokens=None, context_length=None, cap=1024) == 1 + 1024


def test_concurrent_slots_are_held_used_and_given_back() -> None:
    s = Slots(limit=40)  # spare: 2
    assert not s.take() and s.wanted() == 2
    s.held = 3
    assert s.take() and s.take() and not s.needs_more() and s.take() and s.needs_more()  # the last spare
    s.asking = True
    assert not s.needs_more() and not s.take()  # one call at a time
    s.asking = False
    s.waiting = 2
    assert s.wanted() == 3 + 2 + 2  # in use, waiting, spare
    s.waiting, s.held = 0, 10
    assert s.release() == 2 + 2  # 8 idle > twice the spare: down to what is in use plus the spare
    s.held = 4
    assert s.release() is None  # 3 idle: kept
    assert [s.take_local(edges=20) for _ in range(3)] == [True, False, False]  # 40 / 20 edges, 1 in use
    s.release()
    assert s.take_local(edges=20) and not s.take_local(edges=20)  # nothing in use: the share is 2


def test_after_the_primary_had_no_slot_it_is_not_asked_again_for_a_moment() -> None:
    s = Slots(limit=3)
    assert not s.refused(now=0.0)  # never refused: ask
    s.refused_at = 0.0
    assert s.refused(now=0.0) and s.refused(now=SLOTS_RECHECK_S * 0.9)
    assert not s.refused(now=SLOTS_RECHECK_S)  # then the primary is asked again


def test_a_failing_dependency_is_logged_when_it_begins_every_reminder_and_when_it_ends() -> None:
    """``fleet.episode.Episode``, which the edges' limiter and the control plane's prober share."""
    e = Episode(remind_s=60.0)
    assert e.ended(0.0) is None  # nothing under way
    assert e.failed(10.0, "refused") == 0.0  # begins: said
    assert e.failed(11.0, "refused") is None and e.failed(69.0, "refused") is None  # not every call
    assert e.failed(70.0, "refused") == 60.0  # a reminder, with how long it has lasted
    assert e.failed(71.0, "unreachable") == 0.0  # another kind of failure: a new one
    assert e.ended(75.0) == 4.0 and e.ended(76.0) is None
