"""This edge's routing decisions (in memory, no I/O; takes the clock and the random source): one request's
place and the current snapshot in, its ``AttemptPlan`` out — the store's view, this edge's own round trips,
passive ejections and failback ramps folded in, through the one route cache of the current snapshot and
network, with the primary held per pin group. Also where a client stands relative to the edges (the
client-to-edge leg of the end-to-end estimate, and "misrouted by DNS")."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edge.routing.candidates import (
    Ask,
    Candidate,
    Candidates,
    Counts,
    Pick,
    PickPolicy,
    Ring,
    slow_start_share,
)
from edge.routing.failback import Failback
from edge.routing.outlier import OutlierDetector
from edge.routing.ranking import (
    AttemptPlan,
    Decision,
    Lead,
    Network,
    Ranking,
    RouteCache,
    distance_network,
    draw,
    hold,
)
from edge.routing.replicas import PoolLoad, explain, pick, pool_load
from edge.telemetry.observed import Observed
from fleet.models import Catalog
from fleet.signals import EngineSignals
from fleet.state import Location, Snapshot, Topology, distance_rtt_ms

# region -> replica -> (its engine signals, monotonic time of their scrape)
OVERFLOW_MEMORY = 100_000  # overflowed affinity keys remembered (about 10 MB at most)

Signals = Callable[[], Mapping[str, Mapping[str, tuple[EngineSignals, float]]]]

LOAD_MEMO_S = 0.25  # a pool's load is recomputed at least this often (signals age out even unpolled)
CELLS_PER_DEGREE = 4  # client places are memoised per 0.25° cell (about 28 km, under 0.5 ms of RTT)


class Place(Protocol):
    """Where a client is (``edge.admission.geo.ClientPlace``)."""

    @property
    def location(self) -> Location: ...
    @property
    def country(self) -> str | None: ...
    @property
    def continent(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Wanted:
    """What one request asks of the replica choice: its (served) model, affinity key and LoRA adapter."""

    model: str | None = None
    key: int | None = None
    adapter: str | None = None


NOTHING = Wanted()


def wanted_of(catalog: Catalog, model: str | None, key: int | None) -> Wanted:
    """What a request for ``model`` with affinity ``key`` asks of the replica choice — the one place for it:
    the open world forwards any model name and routes on none; a LoRA adapter is wanted by its own name."""
    if catalog.open or model is None:
        return NOTHING if key is None else Wanted(None, key, None)
    return Wanted(model, key, model if catalog.adapter_base(model) else None)


@dataclass(frozen=True, slots=True)
class ReplicaTuning:
    """The replica choice's settings."""

    pick: PickPolicy = field(default_factory=PickPolicy)
    signal_max_age_s: float = 5.0
    slow_start_s: float = 30.0
    slow_start_floor: float = 0.1


class ReplicaChoice:
    """The chooser of one request's attempt plan: the planner's replica choice for what it wants."""

    __slots__ = ("planner", "wanted")

    def __init__(self, planner: Planner, wanted: Wanted) -> None:
        self.planner, self.wanted = planner, wanted

    def replicas(self, region: str) -> list[str]:
        return self.planner.replicas(region, self.wanted.model)

    def choose(self, region: str, exclude: frozenset[str]) -> Pick | None:
        return self.planner.choose(region, exclude, self.wanted)


@dataclass(frozen=True, slots=True)
class ClientView:
    """Where a client stands: its round trip to this edge, the nearest edge and its round trip there, and
    the nearer edge when geo-DNS sent the client here although another is nearer by the misroute margin."""

    client_edge_ms: float
    nearest_edge: str
    nearest_edge_ms: float
    misrouted: str | None


class Planner:
    def __init__(
        self,
        *,
        topology: Topology,
        edge: str,
        outliers: OutlierDetector,
        failback: Failback,
        observed: Observed,
        rng: random.Random,
        clock: Callable[[], float],
        max_attempts: int,
        signals: Signals = dict,
        tuning: ReplicaTuning | None = None,
    ) -> None:
        self.topology = topology
        self.signals = signals
        self.tuning = tuning or ReplicaTuning()
        self.rings = {r.name: Ring([rep.name for rep in r.replicas]) for r in topology.regions}
        self.joined: dict[tuple[str, str], float] = {}  # replicas ramping up (slow start) since when
        self.affinity = {"hit": 0, "overflow": 0}
        self.overflowed: OrderedDict[tuple[str, int], str] = OrderedDict()  # (region, key) -> replica
        self.edge = edge
        self.edge_location = topology.by_name[edge].location
        self.outliers = outliers
        self.failback = failback
        self.observed = observed
        self.rng = rng
        self.clock = clock
        self.max_attempts = max_attempts
        self.urls = {r.name: {rep.name: rep.base_url for rep in r.replicas} for r in topology.regions}
        self.routes: RouteCache | None = None
        self._steady: Snapshot | None = None  # the snapshot under which no region is ramping or held down
        self.distance = distance_network(topology, self.edge_location)
        observed.rtt_default = dict(zip(topology.names, self.distance.rtt_ms, strict=True))
        self._network, self._network_version = self.distance, -1
        # (pin group, the model's regions) -> held primary
        self.leads: dict[tuple[tuple[str, ...] | None, frozenset[str] | None], Lead] = {}
        self._places: dict[tuple[int, int], ClientView] = {}
        # (region, model) -> (the signals and route cache it was computed on, when, its pool load)
        self._counts: dict[str, Counts] = {}  # region -> its candidates from counts alone (its last list)
        self._loads: dict[tuple[str, str | None], tuple[object, object, float, PoolLoad | None]] = {}

    def network(self) -> Network:
        """This edge's round trip to every region: measured where probed, else from distance."""
        observed = self.observed
        if observed.rtt_version != self._network_version:
            measured = observed.rtt
            self._network = Network(
                tuple(
                    measured.get(n, d) for n, d in zip(self.topology.names, self.distance.rtt_ms, strict=True)
                ),
                frozenset(measured),
            )
            self._network_version = observed.rtt_version
        return self._network

    def cache(self, snapshot: Snapshot) -> RouteCache:
        """The route cache of ``snapshot`` and the current network: a change of either makes a new one."""
        routes, network = self.routes, self.network()
        if routes is None or routes.snapshot is not snapshot or routes.network is not network:
            old, routes = routes, RouteCache(self.topology, snapshot, network)
            self.routes = routes
            if old is not None and old.snapshot is not snapshot:
                self._joins(old, routes)
        return routes

    def _joins(self, old: RouteCache, new: RouteCache) -> None:
        """Replicas serving in the new snapshot but not in the old one start their slow start now."""
        now = self.clock()
        window = self.tuning.slow_start_s
        self.joined = {k: t for k, t in self.joined.items() if now - t < window}
        for name in self.topology.names:
            before = set(old.serving(name))
            for replica in new.serving(name):
                if replica not in before:
                    self.joined[(name, replica)] = now

    def decide(self, place: Place, snapshot: Snapshot, model: str | None = None) -> Decision:
        """Primary, backup and order of regions for a client at ``place`` (the primary held per pin group)."""
        now = self.clock()
        share = None if self._steady is snapshot else self._shares(snapshot, now)  # steady: every region full
        ranking = self._ranking(self.cache(snapshot), place, model, now, share)
        group = (ranking.pinned, ranking.serving)
        old = self.leads.get(group)
        lead = hold(old, ranking, now=now, rng=self.rng)
        if lead is not old and lead is not None:
            self.leads[group] = lead
        return draw(ranking, self.rng, None if lead is None else lead.region)

    def imagine(self, place: Place, snapshot: Snapshot, model: str | None = None) -> Decision:
        """The decision a hypothetical ``snapshot`` would give (the explainer's what-if), leaving this
        planner's route cache, holds and failback state as they are; the dial draw on a fixed seed."""
        now = self.clock()
        shares = {n: f for n in snapshot.regions if (f := self.failback.share(n, now)) != 1.0}
        routes = RouteCache(self.topology, snapshot, self.network())
        return draw(self._ranking(routes, place, model, now, shares or None), random.Random(0), None)

    def _ranking(
        self, routes: RouteCache, place: Place, model: str | None, now: float, share: dict[str, float] | None
    ) -> Ranking:
        """The regions ranked for a client at ``place`` and ``model`` (none where the catalog is open),
        without the ejected ones."""
        return routes.ranking(
            country=place.country,
            continent=place.continent,
            excluded=self.outliers.ejected_regions(now),
            share=share,
            model=None if self.topology.catalog.open else model,
        )

    def client_view(self, place: Place) -> ClientView:
        """The client's round-trip estimate to this edge and to the nearest edge (memoised per cell)."""
        loc = place.location
        key = (round(loc.lat * CELLS_PER_DEGREE), round(loc.lon * CELLS_PER_DEGREE))
        hit = self._places.get(key)
        if hit is None:
            policy = self.topology.policy
            here = distance_rtt_ms(loc, self.edge_location, policy)
            near = min(self.topology.regions, key=lambda r: distance_rtt_ms(loc, r.location, policy))
            near_ms = distance_rtt_ms(loc, near.location, policy)
            misrouted = near.name if here - near_ms > policy.misroute_margin_ms else None
            hit = ClientView(here, near.name, near_ms, misrouted)
            if len(self._places) >= 100_000:
                self._places.clear()
            self._places[key] = hit
        return hit

    def plan(self, place: Place, snapshot: Snapshot, wanted: Wanted = NOTHING) -> AttemptPlan:
        """The request's whole attempt plan (its replica choices are made as it asks for them)."""
        return AttemptPlan(
            self.decide(place, snapshot, wanted.model),
            chooser=ReplicaChoice(self, wanted),
            urls=self.urls,
            max_attempts=self.max_attempts,
        )

    def replicas(self, region: str, model: str | None = None) -> list[str]:
        """Replicas of ``region`` a request may go to now: serving in the store (and serving ``model``),
        admitted by the breakers (all serving ones if the breakers admit none: the store's view is the
        fallback)."""
        serving = self._serving(region, model)
        return self.outliers.admitted(region, serving, self.clock()) or serving

    def _serving(self, region: str, model: str | None) -> list[str]:
        """Replicas of ``region`` serving in the store (and serving ``model``)."""
        routes = self.routes
        if routes is None:
            return []
        if model is None or self.topology.catalog.open:
            return routes.serving(region)
        return routes.serving_model(region, model)

    def refusing(self, regions: Iterable[str], model: str | None) -> bool:
        """No replica serving ``model`` in ``regions`` is admitted now: each is held (a 429) or ejected by
        its breaker. A fallback model, if the request has one, is asked before them (never a tight loop on
        replicas that refuse); a breaker's half-open probe admits one again."""
        if self.routes is None:
            return False
        now = self.clock()
        for region in regions:
            serving = self._serving(region, model)
            if serving and self.outliers.admitted(region, serving, now):
                return False
        return True

    def choose(self, region: str, exclude: frozenset[str], wanted: Wanted) -> Pick | None:
        """The replica of ``region`` for a request wanting ``wanted``, none of ``exclude``."""
        names = self.replicas(region, wanted.model)
        if exclude:
            names = [n for n in names if n not in exclude]
        if not names:
            return None
        key = wanted.key
        chosen = pick(
            self.candidates(region, names),
            key=key,
            adapter=wanted.adapter,
            ring=self.rings[region],
            policy=self.tuning.pick,
            rng=self.rng,
            last=None if key is None else self.overflowed.get((region, key)),
        )
        if chosen is not None and key is not None:
            self.affinity["hit" if chosen.affinity else "overflow"] += 1
            self._remember(region, key, None if chosen.affinity else chosen.replica)
        return chosen

    def steps(self, region: str, wanted: Wanted) -> list[dict[str, object]]:
        """The replica choice's steps for a request wanting ``wanted`` in ``region`` (the route explainer)."""
        names = self.replicas(region, wanted.model)
        key = wanted.key
        last = None if key is None else self.overflowed.get((region, key))
        return explain(self.candidates(region, names), Ask(self.tuning.pick, key, wanted.adapter, last))

    def pool_load(self, region: str, model: str | None) -> PoolLoad | None:
        """The engines of ``region``'s replicas a request for ``model`` may go to (None: no fresh signals).
        Asked on every request through the gate: computed once per signals poll and route cache, not per
        request (the replica choice builds its own candidates anyway)."""
        signals = self.signals()
        if region not in signals:
            return None
        now = self.clock()
        hit = self._loads.get((region, model))
        if hit is not None and hit[0] is signals and hit[1] is self.routes and now - hit[2] < LOAD_MEMO_S:
            return hit[3]
        load = pool_load(self.candidates(region, self.replicas(region, model)), self.tuning.pick)
        self._loads[(region, model)] = (signals, self.routes, now, load)
        return load

    def _remember(self, region: str, key: int, replica: str | None) -> None:
        """Where an overflowed key went (its conversation's newest prefix is cached there); bounded LRU."""
        memory = self.overflowed
        if replica is None:
            memory.pop((region, key), None)
            return
        memory[(region, key)] = replica
        memory.move_to_end((region, key))
        if len(memory) > OVERFLOW_MEMORY:
            memory.popitem(last=False)

    def describe(self, region: str, model: str | None) -> list[dict[str, object]]:
        """Each replica a request for ``model`` may go to in ``region``, as the picker sees it."""
        now, signals, policy = self.clock(), self.signals().get(region, {}), self.tuning.pick
        rows: list[dict[str, object]] = []
        for r in self.candidates(region, self.replicas(region, model)):
            got = signals.get(r.name)
            sig = r.signals
            rows.append(
                {
                    "replica": r.name,
                    "outstanding": r.outstanding,
                    "share": round(r.share, 3),
                    "signal_age_s": None if got is None else round(now - got[1], 2),
                    "signals": None if sig is None else sig.model_dump(exclude={"at"}),
                    "stale": got is not None and sig is None,
                    "saturated": sig is not None
                    and sig.saturated(max_waiting=policy.max_waiting, max_kv=policy.max_kv),
                }
            )
        return rows

    def candidates(self, region: str, names: list[str]) -> Candidates:
        """What the picker knows of each replica — outstanding requests, fresh signals, slow-start share —
        made when the pipeline looks at it."""
        signals = self.signals().get(region)
        if not signals and not self.joined:  # all that is known of each is this edge's own count
            counts = self._counts.get(region)
            if counts is None or counts.names is not names:
                counts = self._counts[region] = Counts(names, self.observed.outstanding_in(region))
            return counts
        outstanding = self.observed.outstanding_in(region)
        now = self.clock()
        tuning, joined = self.tuning, self.joined

        def make(name: str) -> Candidate:
            got = signals.get(name) if signals else None
            fresh = got[0] if got is not None and now - got[1] <= tuning.signal_max_age_s else None
            since = joined.get((region, name)) if joined else None
            share = (
                1.0
                if since is None
                else slow_start_share(since, now, window_s=tuning.slow_start_s, floor=tuning.slow_start_floor)
            )
            return Candidate(name, outstanding.get(name, 0), fresh, share)

        return Candidates(names, make, signalled=bool(signals), outstanding=outstanding)

    def _shares(self, snapshot: Snapshot, now: float) -> dict[str, float] | None:
        """Regions below full share (recovering or held down), or None when every region is at full share:
        a steady fleet reuses its plans (``decide`` asks only while the snapshot is not known steady)."""
        share: dict[str, float] | None = None
        failback = self.failback
        for name, st in snapshot.regions.items():
            # store-health recoveries ramp and flaps are held down; operator dials and drains apply at once;
            # passive ejections have their own doubling backoff in the breakers
            failback.observe(name, st.health != "down", now)
            f = failback.share(name, now)
            if f != 1.0:
                share = share or {}
                share[name] = f
        self._steady = snapshot if share is None else None
        return share
