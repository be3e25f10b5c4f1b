"""How we choose (pure, no I/O): score regions from this edge, pick primary + backup, hold the primary
against noise, plan a request's attempts, pick a replica.

Functions of (topology, snapshot, this edge's network, request facts, now, rng). The data path is
client -> edge -> region -> edge -> client; once a request is at an edge the client-to-edge leg is the same
whichever region serves it, so regions are ranked on what differs:

    network(edge, r) + service(r) / (1 - utilization(r)) + penalty(health(r))

utilization counts the replicas a region is starting (``RegionState.planned_utilization``).

network is this edge's own measured round trip to r (an EWMA of its probes), or before any measurement the
great-circle distance at fibre speed times a path-inflation factor; it is never averaged with other edges'
views. service is the region's time to first token where the region is (the engine's TTFT metric, or the
edges' TTFT minus their own round trip), the same for every edge. A brown-out — service above the region's
own slow-moving baseline x (1 + tolerance) — does not reorder regions; the region keeps normal/observed of
its dial instead, so traffic leaves in proportion and returns as the region recovers. Pins (residency)
decide before scoring. The primary is held: it changes at once when it stops being a candidate (health,
drain, dial 0, saturation, ejection), otherwise only when another region has been better by more than
``switch_margin_ms`` and ``switch_margin_ratio`` of its score for ``switch_hold_s``. A new primary among
near-equal leaders (within ``tie_margin``) is chosen by a softmin draw, so edges sharing the same numbers do
not herd; one forced by a loss saw one moment, so within ``switch_hold_s`` it yields once to a region better
by more than ``tie_margin`` for ``settle_hold_s``. The operator dials are applied as probabilities along the
order, which honours them exactly in aggregate: a dial of 50 keeps half of a region's traffic and passes the
rest to the next choice.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple, Protocol

from edge.routing.candidates import Pick
from edge.routing.outcome import MODEL_WIDE, RETRIED_ONCE
from fleet.state import Location, Policy, RegionState, Snapshot, Topology, distance_rtt_ms


@dataclass(slots=True)  # not frozen: built ten times per plan, and frozen init costs
class RegionScore:
    region: str
    routable: bool
    why_not: str | None
    network_ms: float  # this edge's round trip to the region
    network_measured: bool  # measured by this edge (else estimated from distance)
    service_ms: float  # time to first token where the region is, inflated by utilization
    utilization: float
    penalty_ms: float
    weight: float
    score_ms: float
    brownout_share: float = 1.0
    service_measured: bool = True  # the store has a service time for it (else the fleet's average)

    @property
    def measured(self) -> bool:
        """Both terms measured: a decision on this score can be held against noise."""
        return self.network_measured and self.service_measured

    def as_dict(self) -> dict[str, object]:
        return {
            "region": self.region,
            "routable": self.routable,
            "why_not": self.why_not,
            "network_ms": round(self.network_ms, 2),
            "network_source": "measured" if self.network_measured else "distance",
            "service_ms": round(self.service_ms, 2),
            "utilization": round(self.utilization, 4),
            "penalty_ms": self.penalty_ms,
            "weight": round(self.weight, 2),
            "score_ms": round(self.score_ms, 2) if math.isfinite(self.score_ms) else None,
            "brownout_share": round(self.brownout_share, 3),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    primary: str | None
    backup: str | None
    order: tuple[str, ...]  # routable regions, best first, after the anti-herding draw
    scores: tuple[RegionScore, ...]
    pinned: tuple[str, ...] | None = None
    panic: bool = False


@dataclass(frozen=True, slots=True)
class Network:
    """This edge's round trip to every region, in topology order: measured where it has measured, else
    estimated from the distance between the edge's and the region's coordinates."""

    rtt_ms: tuple[float, ...]
    measured: frozenset[str] = frozenset()


def distance_network(topology: Topology, edge: Location) -> Network:
    """The estimate before any measurement: great-circle distance from the edge, at fibre speed."""
    return Network(tuple(distance_rtt_ms(edge, r.location, topology.policy) for r in topology.regions))


def score_regions(
    *,
    topology: Topology,
    snapshot: Snapshot,
    network: Network,
    excluded: frozenset[str] = frozenset(),
    share: Mapping[str, float] | None = None,
    panic: bool = False,
) -> tuple[RegionScore, ...]:
    policy = topology.policy
    known = [s.latency_ms for s in snapshot.regions.values() if s.latency_ms is not None]
    # a region nobody has measured yet is assumed as fast as the fleet's average, not faster
    unknown_ms = sum(known) / len(known) if known else policy.default_ttft_ms
    out = []
    for region, net in zip(topology.regions, network.rtt_ms, strict=True):
        measured = region.name in network.measured
        st: RegionState | None = snapshot.regions.get(region.name)
        if st is None:
            out.append(
                RegionScore(region.name, False, "not in store", net, measured, 0.0, 0.0, 0.0, 0, math.inf)
            )
            continue
        util = st.planned_utilization  # replicas starting count: capacity that is coming
        base = st.latency_ms if st.latency_ms is not None else unknown_ms
        brownout = 1.0
        baseline = st.baseline_ms or 0.0
        normal = max(baseline * (1.0 + policy.brownout_tolerance), baseline + policy.brownout_min_excess_ms)
        if st.latency_ms is not None and baseline > 0 and st.latency_ms > normal:
            brownout = max(policy.brownout_min_share, normal / st.latency_ms)
            base = st.baseline_ms or base  # ranked on its normal service time: no reordering, no flapping
        service = base / max(1.0 - min(util, 0.99), 0.01)
        penalty = policy.degraded_penalty_ms if st.health == "degraded" else 0.0
        weight: float = st.weight
        if not panic:
            weight = st.weight * brownout * (share.get(region.name, 1.0) if share is not None else 1.0)
        why = _why_not(st, region.name, util, weight, policy, excluded=excluded, panic=panic)
        score = net + service + penalty
        out.append(
            RegionScore(
                region.name,
                why is None,
                why,
                net,
                measured,
                service,
                util,
                penalty,
                float(weight),
                score,
                brownout,
                st.latency_ms is not None,
            )
        )
    return tuple(out)


def _why_not(
    st: RegionState,
    name: str,
    util: float,
    weight: float,
    policy: Policy,
    *,
    excluded: frozenset[str],
    panic: bool,
) -> str | None:
    """Why a region is not a candidate (None: it is)."""
    if st.drained:
        return "drained"
    if st.weight <= 0:
        return "weight 0"
    if panic:
        return None  # fail open: health, ejection and saturation are ignored
    if st.health == "down":
        return "down"
    if name in excluded:
        return "ejected"
    if util >= policy.max_utilization:
        return "saturated"
    if weight <= 0:
        return "held down"
    return None


def _softmin_order(tier: list[RegionScore], *, temperature: float, rng: random.Random) -> list[RegionScore]:
    """Weighted random permutation: lower scores are likelier to come first."""
    remaining = list(tier)
    best = min(s.score_ms for s in remaining)
    ordered = []
    while remaining:
        weights = [math.exp(-(s.score_ms - best) / temperature) for s in remaining]
        pick = rng.random() * sum(weights)
        idx = len(remaining) - 1
        for i, w in enumerate(weights):
            pick -= w
            if pick <= 0:
                idx = i
                break
        ordered.append(remaining.pop(idx))
    return ordered


def _rank(scores: Sequence[RegionScore], policy: Policy) -> tuple[tuple[RegionScore, ...], int, float]:
    """Routable regions best first, how many lead within ``tie_margin`` of the best, softmin temperature."""
    ranked = tuple(sorted((s for s in scores if s.routable), key=lambda s: (s.score_ms, s.region)))
    if len(ranked) < 2 or policy.tie_margin <= 0:
        return ranked, 0, 0.0
    best = ranked[0].score_ms
    limit = best * (1.0 + policy.tie_margin)
    tier = sum(1 for s in ranked if s.score_ms <= limit)
    if tier < 2:
        return ranked, 0, 0.0
    return ranked, tier, max(best * policy.tie_margin / 2.0, 1e-6)


def _draw_order(
    ranked: Sequence[RegionScore], tier: int, temperature: float, rng: random.Random
) -> list[RegionScore]:
    if tier < 2:
        return list(ranked)
    return _softmin_order(list(ranked[:tier]), temperature=temperature, rng=rng) + list(ranked[tier:])


def dial_walk(order: Sequence[RegionScore]) -> tuple[float, ...]:
    """The dials over ``order``: region i is taken with probability weight_i/100 of what the regions before
    it left; the walk's cumulative probabilities (the last: the chance any region is taken at all)."""
    cum, keep, total = [], 1.0, 0.0
    for s in order:
        d = s.weight / 100.0
        total += keep * d
        keep *= 1.0 - d
        cum.append(total)
    return tuple(cum)


def walk_pick(walk: Sequence[float], rng: random.Random) -> int | None:
    """One draw against a dial walk: the index taken (normalised over the walk; None: every dial at 0)."""
    total = walk[-1] if walk else 0.0
    if total <= 0:
        return None
    i = bisect.bisect_right(walk, rng.random() * total)
    if i >= len(walk):  # rounding at the very top: the last region with any probability
        i = max(j for j in range(len(walk)) if walk[j] > (walk[j - 1] if j else 0.0))
    return i


def apply_dials(order: Sequence[RegionScore], *, rng: random.Random) -> RegionScore | None:
    """Walk the order taking region i with probability weight_i/100 (normalised over the walk)."""
    i = walk_pick(dial_walk(order), rng)
    return None if i is None else order[i]


def choose_backup(order: Sequence[RegionScore], primary: str, *, domains: Mapping[str, str]) -> str | None:
    """Best other routable region, preferring a different failure domain."""
    others = [s for s in order if s.region != primary]
    for s in others:
        if domains.get(s.region) != domains.get(primary):
            return s.region
    return others[0].region if others else None


@dataclass(frozen=True, slots=True)
class Ranking:
    """Everything about a decision that does not depend on the per-request draw: the same for every request
    of a pin group while the snapshot, this edge's network, ejections and failback shares stay the same."""

    scores: tuple[RegionScore, ...]
    ranked: tuple[RegionScore, ...]  # routable candidates (pins applied), best first
    tier: int  # how many leaders are near-equal and shuffled by the softmin draw (0: none)
    temperature: float
    pinned: tuple[str, ...] | None
    panic: bool
    domains: Mapping[str, str]
    policy: Policy
    serving: frozenset[str] | None = None  # the regions serving the request's model (None: no catalog)
    # with no near-equal leaders the order is fixed, so the dial walk is too: its cumulative probabilities
    # and the decision for each possible pick are made once (the per-request draw is one random number)
    walk: tuple[float, ...] | None = None
    outcomes: list[Decision | None] = field(default_factory=list)  # filled on first use
    led: dict[str, Ranking] = field(default_factory=dict)  # this ranking with another region held first
    by_region: dict[str, RegionScore] = field(init=False, repr=False, compare=False)  # of ``ranked``

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_region", {s.region: s for s in self.ranked})

    def score(self, region: str) -> RegionScore | None:
        """``region``'s place in the ranking (None: not a candidate); asked by the hold on every request."""
        return self.by_region.get(region)


def _decision(order: Sequence[RegionScore], chosen: RegionScore | None, ranking: Ranking) -> Decision:
    if chosen is None:
        return Decision(
            None, None, tuple(s.region for s in order), ranking.scores, ranking.pinned, ranking.panic
        )
    backup = choose_backup(order, chosen.region, domains=ranking.domains)
    rest = [s.region for s in order if s.region not in (chosen.region, backup)]
    ordered = (chosen.region, *((backup,) if backup else ()), *rest)
    return Decision(chosen.region, backup, ordered, ranking.scores, ranking.pinned, ranking.panic)


def _fixed_walk(ranking: Ranking) -> Ranking:
    """``ranking`` with the dial walk over its fixed order precomputed (one draw per request after)."""
    walk = dial_walk(ranking.ranked)
    return replace(ranking, walk=walk, outcomes=[None] * len(walk), led={})


def rank_regions(
    *,
    topology: Topology,
    snapshot: Snapshot,
    network: Network,
    country: str | None,
    continent: str | None,
    excluded: frozenset[str] = frozenset(),
    share: Mapping[str, float] | None = None,
    serving: frozenset[str] | None = None,
) -> Ranking:
    """Score every region from this edge and rank the candidates (pins and the model's regions, ``serving``,
    applied first: a region that does not serve the model is no candidate, not a failed one).

    Panic (fail open): when fewer than ``policy.panic_threshold`` of the regions operators left on are
    routable, health and ejections are ignored and traffic spreads over all of them, rather than piling
    onto one survivor or going nowhere.
    """
    policy = topology.policy
    pinned = _pins(policy, country, continent)
    scores = score_regions(
        topology=topology, snapshot=snapshot, network=network, excluded=excluded, share=share
    )
    panic = False
    enabled = [s for s in scores if s.why_not not in ("drained", "weight 0", "not in store")]
    if pinned is not None:
        enabled = [s for s in enabled if s.region in pinned]
    if serving is not None:
        enabled = [s for s in enabled if s.region in serving]
    if enabled:
        healthy = sum(1 for s in enabled if s.routable)
        if healthy / len(enabled) < policy.panic_threshold:
            panic = True
            scores = score_regions(topology=topology, snapshot=snapshot, network=network, panic=True)
    candidates = scores
    if pinned is not None:
        candidates = tuple(s for s in scores if s.region in pinned)
    if serving is not None:
        candidates = tuple(s for s in candidates if s.region in serving)
    ranked, tier, temperature = _rank(candidates, policy)
    ranking = Ranking(scores, ranked, tier, temperature, pinned, panic, topology.domains, policy, serving)
    return _fixed_walk(ranking) if tier < 2 else ranking


def _pins(policy: Policy, country: str | None, continent: str | None) -> tuple[str, ...] | None:
    pins = policy.pins
    if not pins:
        return None
    return pins.get(country or "") or pins.get(continent or "")


@dataclass(frozen=True, slots=True)
class Lead:
    """The primary this edge holds for one pin group, and the challenger timing its hold (if any). A lead
    chosen on estimates (a term not measured yet) is not firm: it follows the ranking until measured. A lead
    that took over because its predecessor stopped being a candidate remembers it (``displaced``): when that
    region is a candidate again and scores better, it takes the lead back at once (failback, not a switch).
    A lead forced by its predecessor's loss was drawn on the numbers of one moment, the noisiest (a region
    has just failed, its traffic is moving): until ``settle_until`` it yields once to a region better by
    more than the tie margin for ``settle_hold_s``, then it is held like any other."""

    region: str
    firm: bool = True
    challenger: str | None = None
    since: float = 0.0
    displaced: str | None = None
    settle_until: float = 0.0


def hold(lead: Lead | None, ranking: Ranking, *, now: float, rng: random.Random) -> Lead | None:
    """Which region leads ``ranking`` now. The incumbent keeps the lead unless it stopped being a candidate
    (down, drained, dial 0, saturated, ejected, not pinned: it moves at once, and moves back at once when
    the region returns), or another region has been better by more than the switch margin for
    ``switch_hold_s``. A new lead among near-equal leaders is a softmin draw (anti-herding); one forced by
    a loss yields once, within ``switch_hold_s``, to a region better by more than the tie margin for
    ``settle_hold_s``."""
    ranked = ranking.ranked
    if not ranked:
        return lead  # nothing routable: remember the lead for when something is
    if lead is not None and lead.firm and lead.challenger is None and ranked[0].region == lead.region:
        return lead  # the steady state: the held primary is still the best
    inc = None if lead is None else ranking.score(lead.region)
    p = ranking.policy
    if lead is None or inc is None:
        first = _draw_order(ranked, ranking.tier, ranking.temperature, rng)[0]
        if lead is None:  # the first choice: held like any other once measured
            return Lead(first.region, _firm(ranking, first))
        return Lead(
            first.region, _firm(ranking, first), displaced=lead.region, settle_until=now + p.switch_hold_s
        )
    back = None if lead.displaced is None else ranking.score(lead.displaced)
    if back is not None and back.score_ms < inc.score_ms:  # the region it stood in for is back
        return Lead(back.region, _firm(ranking, back))
    best = ranked[0]
    if not lead.firm:  # chosen on estimates: follow the ranking until the choice stands on measurements
        if best.region != lead.region and best.score_ms < inc.score_ms:  # still settling, if it was
            return Lead(
                best.region, _firm(ranking, best), displaced=lead.displaced, settle_until=lead.settle_until
            )
        return replace(lead, firm=True) if _firm(ranking, inc) else lead
    settling = now < lead.settle_until  # a lead forced by a loss: the tie margin, a short hold, once only
    margin = (
        p.tie_margin * inc.score_ms
        if settling
        else max(p.switch_margin_ms, p.switch_margin_ratio * inc.score_ms)
    )
    if best.region == lead.region or inc.score_ms - best.score_ms <= margin:
        return lead if lead.challenger is None else replace(lead, challenger=None)
    if lead.challenger != best.region:
        return replace(lead, challenger=best.region, since=now)
    if now - lead.since < (p.settle_hold_s if settling else p.switch_hold_s):
        return lead
    return Lead(best.region, displaced=lead.displaced if settling else None)


def _firm(ranking: Ranking, lead: RegionScore) -> bool:
    """A lead may be held once its own terms are measured and no region that scores better is an
    estimate (an unmeasured region that looks better is tried, and so measured, rather than held off)."""
    return lead.measured and all(s.measured for s in ranking.ranked if s.score_ms < lead.score_ms)


def _led(ranking: Ranking, lead: str) -> Ranking:
    """``ranking`` with ``lead`` first and the rest in score order (a fixed order: no per-request softmin)."""
    hit = ranking.led.get(lead)
    if hit is None:
        first = ranking.score(lead)
        if first is None:
            return ranking
        ranked = (first, *(s for s in ranking.ranked if s.region != lead))
        hit = ranking.led[lead] = _fixed_walk(replace(ranking, ranked=ranked, tier=0))
    return hit


def draw(ranking: Ranking, rng: random.Random, lead: str | None = None) -> Decision:
    """The per-request part: the order (the held lead first, or a softmin draw among near-equal leaders),
    the dials, the backup."""
    if lead is not None and (ranking.tier >= 2 or (ranking.ranked and ranking.ranked[0].region != lead)):
        ranking = _led(ranking, lead)
    walk = ranking.walk
    if walk is not None:  # fixed order: one draw against the precomputed walk
        i = walk_pick(walk, rng)
        if i is None:
            return _decision(ranking.ranked, None, ranking)
        hit = ranking.outcomes[i]
        if hit is None:
            hit = ranking.outcomes[i] = _decision(ranking.ranked, ranking.ranked[i], ranking)
        return hit
    order = _draw_order(ranking.ranked, ranking.tier, ranking.temperature, rng)
    return _decision(order, apply_dials(order, rng=rng), ranking)


def route(
    *,
    topology: Topology,
    snapshot: Snapshot,
    network: Network,
    country: str | None,
    continent: str | None,
    rng: random.Random,
    excluded: frozenset[str] = frozenset(),
    share: Mapping[str, float] | None = None,
) -> Decision:
    """Score every region and choose primary + backup for one request (no cache, no hold)."""
    ranking = rank_regions(
        topology=topology,
        snapshot=snapshot,
        network=network,
        country=country,
        continent=continent,
        excluded=excluded,
        share=share,
    )
    return draw(ranking, rng)


class RouteCache:
    """Everything routing derives from one snapshot and one view of this edge's network: plans by (pins,
    ejected regions, failback shares) and the serving replicas of each region. Built for one snapshot and
    network and dropped with them (the planner makes a new one when either changes), so nothing here is
    ever invalidated. Plans are pure functions of their key: a hit decides exactly as ``rank_regions``."""

    __slots__ = (
        "_by_model",
        "_rankings",
        "_regions",
        "_serving",
        "hits",
        "max_entries",
        "misses",
        "network",
        "snapshot",
        "topology",
    )

    def __init__(
        self, topology: Topology, snapshot: Snapshot, network: Network, *, max_entries: int = 10_000
    ) -> None:
        self.topology = topology
        self.snapshot = snapshot
        self.network = network
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._rankings: dict[tuple[object, ...], Ranking] = {}
        self._serving: dict[str, list[str]] = {}
        self._by_model: dict[tuple[str, str], list[str]] = {}
        self._regions: dict[str, frozenset[str]] = {}

    def ranking(
        self,
        *,
        country: str | None,
        continent: str | None,
        excluded: frozenset[str] = frozenset(),
        share: Mapping[str, float] | None = None,
        model: str | None = None,
    ) -> Ranking:
        pins = _pins(self.topology.policy, country, continent)
        serving = None if model is None else self.regions_serving(model)
        key = (pins, excluded, None if share is None else tuple(sorted(share.items())), serving)
        ranking = self._rankings.get(key)
        if ranking is None:
            self.misses += 1
            ranking = rank_regions(
                topology=self.topology,
                snapshot=self.snapshot,
                network=self.network,
                country=country,
                continent=continent,
                excluded=excluded,
                share=share,
                serving=serving,
            )
            if len(self._rankings) >= self.max_entries:
                self._rankings.clear()
            self._rankings[key] = ranking
        else:
            self.hits += 1
        return ranking

    def serving(self, region: str) -> list[str]:
        """Replica names of ``region`` that the store does not hold down, in declaration order."""
        hit = self._serving.get(region)
        if hit is None:
            hit = self._serving[region] = serving_replicas(self.topology, self.snapshot, region)
        return hit

    def serving_model(self, region: str, model: str) -> list[str]:
        """The serving replicas of ``region`` that serve ``model``."""
        key = (region, model)
        hit = self._by_model.get(key)
        if hit is None:
            catalog = self.topology.catalog
            hit = [r for r in self.serving(region) if catalog.serves(region, r, model)]
            self._by_model[key] = hit
        return hit

    def regions_serving(self, model: str) -> frozenset[str]:
        """Regions with a serving replica of ``model`` (none of them down in the store)."""
        hit = self._regions.get(model)
        if hit is None:
            hit = frozenset(
                r for r in self.topology.catalog.regions_for(model) if self.serving_model(r, model)
            )
            self._regions[model] = hit
        return hit


def serving_replicas(topology: Topology, snapshot: Snapshot, region: str) -> list[str]:
    """Replica names of a region that are not down, in declaration order."""
    reg = topology.region(region)
    st = snapshot.regions.get(region)
    if reg is None:
        return []
    health = st.replicas if st is not None else {}
    return [r.name for r in reg.replicas if health.get(r.name, "up") != "down"]


AttemptKind = Literal["primary", "retry", "failover", "hedge"]
NONE_USED: frozenset[str] = frozenset()


class Attempt(NamedTuple):
    """One upstream attempt: where it goes, what kind it is, and why it goes there (a named tuple: one is
    made per attempt, and a tuple is made at a fraction of a frozen dataclass's cost)."""

    region: str
    replica: str
    url: str  # the replica's base URL
    kind: AttemptKind
    reason: str  # why this region
    choice: str  # why this replica (the replica choice's account)

    @property
    def why(self) -> str:
        return f"{self.reason}; {self.choice}"


class Chooser(Protocol):
    """The replica choice inside a region for one request (the planner's knows its model and key)."""

    def replicas(self, region: str) -> Sequence[str]: ...

    def choose(self, region: str, exclude: frozenset[str]) -> Pick | None: ...


class AttemptPlan:
    """One request's plan: the decision (primary, backup, regions in order), the replica choice inside each
    region, and the answer to "what next, given what was tried".

    First the primary region's best replica (the chooser's pick). After a retryable failure there
    (``edge.routing.outcome``: throttled, 500, 502-504, connect, timeout), once more on another replica of
    the same region; then (but never after a 500) the next region in order, the backup first. The hedge goes
    to the backup region. At most ``max_attempts`` attempts in all."""

    __slots__ = ("_chooser", "_urls", "decision", "max_attempts", "tried")

    def __init__(
        self,
        decision: Decision,
        *,
        chooser: Chooser,
        urls: Mapping[str, Mapping[str, str]],
        max_attempts: int,
    ) -> None:
        self.decision = decision
        self._chooser = chooser
        self._urls = urls
        self.max_attempts = max_attempts
        self.tried: list[tuple[Attempt, str]] = []  # (attempt, outcome kind), in the order they ended

    def failed(self, attempt: Attempt, kind: str) -> None:
        """``attempt`` ended without a response for the client (``kind``: its outcome's kind)."""
        self.tried.append((attempt, kind))

    def next(self) -> Attempt | None:
        """The next attempt, or None when the plan is spent."""
        d, tried = self.decision, self.tried
        if d.primary is None or len(tried) >= self.max_attempts:
            return None
        if not tried:
            why = "best-scored region (after dials)"
            if d.pinned is not None:
                why = f"data-residency pin ({', '.join(d.pinned)}): the best-scored of them (after dials)"
            return self._in(d.primary, "primary", why)
        last, kind = tried[-1]
        if kind in MODEL_WIDE:  # every replica of the model would say the same
            return None
        if kind in RETRIED_ONCE and sum(1 for _, k in tried if k in RETRIED_ONCE) > 1:
            return None  # it broke two engines: it would break the next too (a query of death)
        in_region = sum(1 for a, _ in tried if a.region == last.region)
        if in_region == 1:  # its first failure in this region: another replica there first
            t = self._in(last.region, "retry", f"{kind} on {last.replica}: another replica")
            if t is not None:
                return t
        used = {a.region for a, _ in tried}
        for region in d.order:
            if region not in used:
                why = "backup region" if region == d.backup else "next region by score"
                t = self._in(region, "failover", f"{kind} in {last.region}: {why}")
                if t is not None:
                    return t
        return None

    def hedge(self) -> Attempt | None:
        """The hedge: a replica of the backup region (a different region, by construction)."""
        backup = self.decision.backup
        if backup is None or len(self.tried) >= self.max_attempts:
            return None
        return self._in(backup, "hedge", "primary slow to its first byte: backup region")

    def candidates(self) -> list[dict[str, object]]:
        """Every region in order with the replicas a request may go to there (for the route explainer)."""
        d = self.decision
        out: list[dict[str, object]] = []
        for region in d.order:
            role = "primary" if region == d.primary else "backup" if region == d.backup else "failover"
            out.append({"region": region, "role": role, "replicas": list(self._chooser.replicas(region))})
        return out

    def _in(self, region: str, kind: AttemptKind, why: str) -> Attempt | None:
        tried = self.tried
        used = frozenset(a.replica for a, _ in tried if a.region == region) if tried else NONE_USED
        chosen = self._chooser.choose(region, used)
        if chosen is None:
            return None
        return Attempt(region, chosen.replica, self._urls[region][chosen.replica], kind, why, chosen.why)
