"""The replica choice inside a region (pure): saturation, LoRA, bounded-load consistent hashing, slow start;
the request's affinity key; engines' metrics as signals; the planner trusting only fresh signals."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.engines import parse_metrics
from edge.admission.request import BodyError, read
from edge.routing.candidates import Candidate, PickPolicy, Ring, slow_start_share
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector
from edge.routing.planner import Planner, ReplicaTuning, Wanted
from edge.routing.replicas import pick
from edge.telemetry.observed import Observed
from fleet.signals import EngineSignals
from fleet.state import Snapshot, Topology, initial_state
from fleet.topology import load_topology
from tests.fleet import ROOT

POLICY = PickPolicy()
NAMES = [f"r{i}" for i in range(8)]
RING = Ring(NAMES)


def keys(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(n)]


def assign(names: list[str], key: int) -> str:
    chosen = pick(
        [Candidate(n, 0) for n in names],
        key=key,
        adapter=None,
        ring=RING,
        policy=POLICY,
        rng=random.Random(),
    )
    assert chosen is not None
    return chosen.replica


def test_when_one_of_n_replicas_leaves_only_its_keys_move_about_one_in_n() -> None:
    ks = keys(10_000)
    before = {k: assign(NAMES, k) for k in ks}
    after = {k: assign([n for n in NAMES if n != "r3"], k) for k in ks}
    moved = [k for k in ks if before[k] != after[k]]
    assert all(before[k] == "r3" for k in moved)  # only the leaver's keys move
    assert len(moved) / len(ks) <= 1.3 / len(NAMES)  # about 1/N (12.5 %), measured on 10,000 keys
    spread = Counter(before.values())
    assert max(spread.values()) / min(spread.values()) < 1.5  # 100 points each: keys spread evenly


def test_no_replica_exceeds_c_times_the_mean_under_a_skewed_key_workload() -> None:
    rng = random.Random(5)
    hot = keys(20, seed=9)
    load = dict.fromkeys(NAMES, 0)
    for _ in range(4000):  # zipf-like: key i drawn with weight 1/(i+1); nothing completes
        key = rng.choices(hot, weights=[1 / (i + 1) for i in range(len(hot))])[0]
        chosen = pick(
            [Candidate(n, load[n]) for n in NAMES],
            key=key,
            adapter=None,
            ring=RING,
            policy=POLICY,
            rng=rng,
        )
        assert chosen is not None
        load[chosen.replica] += 1
    mean = sum(load.values()) / len(load)
    assert max(load.values()) <= POLICY.load_factor * mean + 1


def test_the_same_key_picks_the_same_replica_with_room_and_overflows_when_full() -> None:
    key = keys(1)[0]
    first = pick(
        [Candidate(n, 0) for n in NAMES],
        key=key,
        adapter=None,
        ring=RING,
        policy=POLICY,
        rng=random.Random(),
    )
    assert first is not None and first.affinity
    crowded = [Candidate(n, 10 if n == first.replica else 0) for n in NAMES]
    moved = pick(crowded, key=key, adapter=None, ring=RING, policy=POLICY, rng=random.Random())
    assert moved is not None and moved.replica != first.replica and not moved.affinity


def sig(**kw: object) -> EngineSignals:
    return EngineSignals.model_validate({"at": 0.0, **kw})


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ({"a": sig(waiting=5), "b": sig()}, "b"),  # the inference extension's defaults: waiting >= 5 ...
        ({"a": sig(kv_usage=0.8), "b": sig()}, "b"),  # ... or KV cache >= 0.8 is saturated
        ({"a": sig(waiting=4, kv_usage=0.79), "b": sig(waiting=4, kv_usage=0.79)}, None),  # both have room
        ({"a": sig(waiting=9), "b": sig(waiting=9)}, None),  # all saturated: still served (not refused)
    ],
)
def test_saturated_replicas_are_left_out_while_another_has_room(
    signals: dict[str, EngineSignals], expected: str | None
) -> None:
    seen = set()
    for i in range(50):
        cands = [Candidate(n, 0, signals[n]) for n in ("a", "b")]
        chosen = pick(
            cands, key=keys(50)[i], adapter=None, ring=Ring(["a", "b"]), policy=POLICY, rng=random.Random(i)
        )
        assert chosen is not None
        seen.add(chosen.replica)
    assert seen == ({expected} if expected else {"a", "b"})


def test_lora_prefers_the_adapter_loaded_then_a_free_slot() -> None:
    cands = [
        Candidate("full", 0, sig(running_adapters=("x", "y"), max_lora=2)),
        Candidate("free", 0, sig(running_adapters=("x",), max_lora=2)),
        Candidate("has", 0, sig(running_adapters=("support",), max_lora=1)),
    ]
    ring = Ring(["full", "free", "has"])
    for k in keys(30):
        chosen = pick(cands, key=k, adapter="support", ring=ring, policy=POLICY, rng=random.Random())
        assert chosen is not None and chosen.replica == "has"
        chosen = pick(cands, key=k, adapter="other", ring=ring, policy=POLICY, rng=random.Random())
        assert chosen is not None and chosen.replica == "free"


def test_slow_start_ramps_a_joining_replica_from_the_floor() -> None:
    assert slow_start_share(None, 100.0, window_s=30) == 1.0
    assert slow_start_share(100.0, 100.0, window_s=30) == 0.1
    assert slow_start_share(100.0, 115.0, window_s=30) == pytest.approx(0.5)
    assert slow_start_share(100.0, 200.0, window_s=30) == 1.0
    # a ramping replica takes a small share of keyless traffic while its peers have the same load
    got: Counter[str] = Counter()
    rng = random.Random(2)
    load = {"new": 0, "old": 0}
    for _ in range(2000):
        cands = [Candidate("new", load["new"], share=0.1), Candidate("old", load["old"])]
        chosen = pick(cands, key=None, adapter=None, ring=Ring(["new", "old"]), policy=POLICY, rng=rng)
        assert chosen is not None
        got[chosen.replica] += 1
        load[chosen.replica] += 1
    assert got["new"] / 2000 < 0.15


def test_affinity_key_precedence_and_a_conversation_keeps_its_key() -> None:
    turn1 = (
        b'{"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"}]}'
    )
    turn2 = (
        b'{"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},'
        b' {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]}'
    )
    other = (
        b'{"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "zz"}]}'
    )
    a, b, c = read(turn1, None), read(turn2, None), read(other, None)
    assert a.key_source == "prefix" and a.key == b.key != c.key
    assert read(turn1, "s-1").key_source == "session" and read(turn1, "s-1").key == read(other, "s-1").key
    pck = read(b'{"model": "m", "prompt_cache_key": "k"}', "s-1")
    assert pck.key_source == "prompt_cache_key" and pck.model == "m"
    with pytest.raises(BodyError, match=r"\$.model"):
        read(b'{"model": 5}', None)


VLLM = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 6.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.42
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="b,a",waiting_lora_adapters="c"} 1.7e9
"""
SGLANG = """# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 2.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 1.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.5
"""
TGI = """# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 7
# TYPE tgi_queue_size gauge
tgi_queue_size 2
"""


def test_engines_metrics_map_to_the_same_signals() -> None:
    v = parse_metrics(VLLM, at=1.0)
    assert (v.running, v.waiting, v.kv_usage, v.max_lora) == (3, 6, 0.42, 4)
    assert v.running_adapters == ("a", "b") and v.waiting_adapters == ("c",)
    s = parse_metrics(SGLANG, at=1.0)
    assert (s.running, s.waiting, s.kv_usage) == (2, 1, 0.5)
    t = parse_metrics(TGI, at=1.0)
    assert (t.running, t.waiting, t.kv_usage) == (7, 2, None)


def eu_planner(topo: Topology, clock: Callable[[], float], **kw: Any) -> Planner:
    """The eu-west-1 edge's planner on ``clock``, with nothing ejected or ramping at its start."""
    return Planner(
        topology=topo,
        edge="eu-west-1",
        outliers=OutlierDetector(),
        failback=Failback(),
        observed=Observed(),
        rng=random.Random(0),
        clock=clock,
        max_attempts=3,
        **kw,
    )


def test_the_planner_ignores_stale_signals() -> None:
    topo = load_topology(ROOT / "regions.yaml")
    now = [1000.0]
    full = EngineSignals(waiting=50, kv_usage=0.99, at=0.0)
    published = {"eu-west-1": {"euw1-a": (full, 999.0), "euw1-b": (full, 980.0)}}
    planner = eu_planner(
        topo, lambda: now[0], signals=lambda: published, tuning=ReplicaTuning(signal_max_age_s=5.0)
    )
    planner.cache(Snapshot(version=1, regions={r.name: initial_state(r, now=0.0) for r in topo.regions}))
    got = {r.name: r.signals for r in planner.candidates("eu-west-1", ["euw1-a", "euw1-b"])}
    assert got["euw1-a"] == full and got["euw1-b"] is None  # 1 s old is used, 20 s old is not
    chosen = planner.choose("eu-west-1", frozenset(), Wanted())
    assert chosen is not None and chosen.replica == "euw1-b"  # the stale one's load is not believed


def test_a_replica_that_comes_back_in_the_store_slow_starts() -> None:
    topo = load_topology(ROOT / "regions.yaml")
    now = [50.0]
    planner = eu_planner(topo, lambda: now[0], tuning=ReplicaTuning(slow_start_s=30.0))
    states = {r.name: initial_state(r, now=0.0) for r in topo.regions}
    planner.cache(Snapshot(version=1, regions=states))
    assert {r.share for r in planner.candidates("eu-west-1", ["euw1-a", "euw1-b"])} == {
        1.0
    }  # at start: no ramp
    down = states["eu-west-1"].model_copy(update={"replicas": {"euw1-a": "down", "euw1-b": "up"}})
    planner.cache(Snapshot(version=2, regions={**states, "eu-west-1": down}))
    now[0] = 60.0
    planner.cache(Snapshot(version=3, regions=states))  # euw1-a is back
    now[0] = 75.0
    shares = {r.name: r.share for r in planner.candidates("eu-west-1", ["euw1-a", "euw1-b"])}
    assert shares == {"euw1-a": pytest.approx(0.5), "euw1-b": 1.0}


def test_an_overflowed_key_stays_where_its_newest_prefix_is_while_that_replica_has_room() -> None:
    key = keys(1)[0]
    home = assign(NAMES, key)
    other = next(n for n in NAMES if n != home)
    idle = [Candidate(n, 0) for n in NAMES]
    kept = pick(idle, key=key, adapter=None, ring=RING, policy=POLICY, rng=random.Random(), last=other)
    assert kept is not None and kept.replica == other and not kept.affinity and "kept" in kept.why
    full = [Candidate(n, 10 if n == other else 0) for n in NAMES]
    back = pick(full, key=key, adapter=None, ring=RING, policy=POLICY, rng=random.Random(), last=other)
    assert back is not None and back.replica == home and back.affinity
