"""The replica choice's steps, each alone (filters, scorers, pickers), and the pipeline's explanation."""

from __future__ import annotations

import random

import pytest

from edge.routing import filters, pickers, scorers
from edge.routing.candidates import Ask, Candidate, Candidates, Counts, PickPolicy, Ring
from edge.routing.replicas import explain, pick
from fleet.signals import EngineSignals

POLICY = PickPolicy()


def sig(**kw: object) -> EngineSignals:
    return EngineSignals.model_validate({"at": 0.0, **kw})


def names(pool: object) -> list[str]:
    return [r.name for r in pool]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("signals", "kept", "note"),
    [
        ({"a": None, "b": None}, ["a", "b"], None),  # nothing known: nothing left out
        ({"a": sig(waiting=5), "b": sig()}, ["b"], "saturated left out"),
        (
            {"a": sig(kv_usage=0.8), "b": None},
            ["b"],
            "saturated left out",
        ),  # no signals: room as far as known
        ({"a": sig(waiting=4.9, kv_usage=0.79), "b": sig()}, ["a", "b"], None),
        ({"a": sig(waiting=9), "b": sig(kv_usage=0.95)}, ["a", "b"], "all saturated"),  # served, not refused
    ],
)
def test_the_room_filter(signals: dict[str, EngineSignals | None], kept: list[str], note: str | None) -> None:
    pool = [Candidate(n, 0, s) for n, s in signals.items()]
    got, said = filters.room(pool, Ask(POLICY))
    assert (names(got), said) == (kept, note)


@pytest.mark.parametrize(
    ("adapter", "kept", "note"),
    [
        (None, ["full", "free", "has", "blind"], None),
        ("support", ["has"], "adapter loaded"),
        ("other", ["free", "blind"], "free adapter slot"),  # max_lora unknown: a slot as far as known
    ],
)
def test_the_adapter_filter(adapter: str | None, kept: list[str], note: str | None) -> None:
    pool = [
        Candidate("full", 0, sig(running_adapters=("x", "y"), max_lora=2)),
        Candidate("free", 0, sig(running_adapters=("x",), max_lora=2)),
        Candidate("has", 0, sig(running_adapters=("support",), max_lora=1)),
        Candidate("blind", 0, sig()),
    ]
    got, said = filters.adapter(pool, Ask(POLICY, adapter=adapter))
    assert (names(got), said) == (kept, note)


@pytest.mark.parametrize(
    ("replica", "load", "engine"),
    [
        (Candidate("idle", 0), 1.0, 1.0),
        (Candidate("busy", 3), 0.25, 1.0),
        (Candidate("ramping", 0, share=0.5), 0.5, 1.0),
        (Candidate("queued", 0, sig(waiting=5)), 1.0, 0.5),
        (Candidate("full cache", 1, sig(kv_usage=1.0)), 0.5, 0.5),
        (Candidate("both", 1, sig(waiting=5, kv_usage=1.0)), 0.5, 1 / 3),
    ],
)
def test_the_scorers_rate_in_zero_to_one(replica: Candidate, load: float, engine: float) -> None:
    assert scorers.load(replica, POLICY) == pytest.approx(load)
    assert scorers.engine(replica, POLICY) == pytest.approx(engine)
    assert 0 < scorers.score(replica, POLICY) <= 1
    assert scorers.score(replica, POLICY) == pytest.approx(load * engine)


def test_weights_are_exponents_and_zero_switches_a_scorer_off() -> None:
    queued = Candidate("q", 0, sig(waiting=5))
    assert scorers.score(queued, PickPolicy(weights=(("load", 1.0), ("engine", 0.0)))) == 1.0
    assert scorers.score(queued, PickPolicy(weights=(("load", 1.0), ("engine", 2.0)))) == pytest.approx(0.25)


def test_two_choices_takes_the_better_score_of_two_distinct_draws() -> None:
    pool = [Candidate("a", 5), Candidate("b", 0)]
    assert {pickers.two_choices(pool, POLICY, random.Random(i)).name for i in range(20)} == {"b"}
    assert pickers.two_choices([Candidate("only", 9)], POLICY, random.Random(0)).name == "only"
    # with weights that ignore the load, a queued engine loses to an idle one however busy this edge is there
    weighed = [Candidate("a", 0, sig(waiting=50)), Candidate("b", 9, sig())]
    engine_only = PickPolicy(weights=(("load", 0.0), ("engine", 1.0)))
    assert {pickers.two_choices(weighed, engine_only, random.Random(i)).name for i in range(20)} == {"b"}


def test_the_bounded_ring_sends_a_key_home_and_overflows_it_when_home_is_full() -> None:
    ring = Ring(["a", "b", "c"])
    idle = [Candidate(n, 0) for n in "abc"]
    home, on_key = pickers.bounded_ring(idle, 12345, ring, 1.25, None)
    assert on_key
    crowded = [Candidate(n, 10 if n == home.name else 0) for n in "abc"]
    moved, on_key = pickers.bounded_ring(crowded, 12345, ring, 1.25, None)
    assert moved.name != home.name and not on_key


def test_a_keys_walk_is_every_replica_once_in_ring_order_from_its_place() -> None:
    names = [f"r{i}" for i in range(17)]
    ring = Ring(names)
    points = sorted((p, n) for p, n in zip(ring._points, ring._names, strict=True))
    rng = random.Random(3)
    for key in [0, 2**64 - 1, points[0][0], points[-1][0], *(rng.getrandbits(64) for _ in range(200))]:
        start = next((i for i, (p, _) in enumerate(points) if p >= key), 0)  # the key's place, wrapping
        along = [n for _, n in points[start:] + points[:start]]
        expected = list(dict.fromkeys(along))  # distinct, in the order met
        assert list(ring.walk(key)) == expected
        assert ring.walk(key) is ring.walk(key)  # made once per starting point
    assert Ring([]).walk(42) == ()


def test_the_bounded_ring_skips_replicas_that_are_not_candidates() -> None:
    ring = Ring(["a", "b", "c"])
    home, _ = pickers.bounded_ring([Candidate(n, 0) for n in "abc"], 777, ring, 1.25, None)
    others = [Candidate(n, 0) for n in "abc" if n != home.name]
    chosen, on_key = pickers.bounded_ring(others, 777, ring, 1.25, None)
    assert chosen.name == next(n for n in ring.walk(777) if n != home.name)  # the next along the ring
    assert on_key  # the first candidate along the ring is the key's own while its home is gone


def test_lazy_candidates_are_made_only_when_looked_at() -> None:
    made: list[str] = []

    def make(name: str) -> Candidate:
        made.append(name)
        return Candidate(name, 0)

    pool = Candidates([f"r{i}" for i in range(50)], make, signalled=False, outstanding={})
    chosen = pick(pool, key=None, adapter=None, ring=Ring([]), policy=POLICY, rng=random.Random(1))
    assert chosen is not None and len(made) == 2  # the two draws, not the region's fifty


def test_the_bounded_ring_makes_only_the_replicas_its_walk_looks_at() -> None:
    names_ = [f"r{i}" for i in range(50)]
    outstanding = {n: i % 4 for i, n in enumerate(names_)}
    ring = Ring(names_)
    made: list[str] = []

    def make(name: str) -> Candidate:
        made.append(name)
        return Candidate(name, outstanding[name])

    for key in (1, 2**40, 2**63 + 5, 2**64 - 3):
        made.clear()
        lazy = Candidates(names_, make, signalled=False, outstanding=outstanding)
        plain = [Candidate(n, outstanding[n]) for n in names_]
        got, want = (
            pickers.bounded_ring(lazy, key, ring, 1.25, None),
            pickers.bounded_ring(plain, key, ring, 1.25, None),
        )
        assert (got[0].name, got[1]) == (want[0].name, want[1])  # the same choice as over made replicas
        walk = ring.walk(key)
        assert made == list(walk[: walk.index(got[0].name) + 1])  # the walk up to its choice, not all fifty


def test_a_count_only_view_reads_the_live_counts_on_every_look() -> None:
    outstanding = {"a": 3}
    pool = Counts(["a", "b"], outstanding)
    assert [(r.name, r.outstanding) for r in pool] == [("a", 3), ("b", 0)] and not pool.signalled
    outstanding["b"] = 5  # a request left for b: the same view, reused by the next request, sees it
    assert pool[1].outstanding == 5 and pool[-1].name == "b" and names(pool[0:2]) == ["a", "b"]
    chosen = pick(pool, key=None, adapter=None, ring=Ring([]), policy=POLICY, rng=random.Random(1))
    assert chosen is not None and chosen.replica == "a"  # 3 in flight against 5: the two draws compare


def test_explain_shows_what_each_step_kept_and_every_raw_rating() -> None:
    pool = [Candidate("a", 0, sig(waiting=9)), Candidate("b", 1, sig(kv_usage=0.5)), Candidate("c", 0)]
    steps = explain(pool, Ask(POLICY))
    assert steps[0] == {"filter": "room", "kept": ["b", "c"], "note": "saturated left out"}
    assert steps[1] == {"filter": "adapter", "kept": ["b", "c"], "note": None}
    assert steps[2] == {
        "scores": {
            "b": {
                "load": 0.5,
                "engine": pytest.approx(0.6667, abs=1e-4),
                "score": pytest.approx(0.3333, abs=1e-4),
            },
            "c": {"load": 1.0, "engine": 1.0, "score": 1.0},
        }
    }
    assert steps[3] == {"picker": "two choices"}
    assert explain(pool, Ask(POLICY, key=7))[3] == {"picker": "bounded-load ring"}
