"""This edge's routing decisions (in memory, no I/O; takes the clock and the random source): one request's
place and the current snapshot in, its ``AttemptPlan`` out — the store's view, this edge's own round trips,
passive ejections and failback ramps folded in, through the one route cache of the current snapshot and
network, with the primary held per pin group. Also where a client stands relative to the edges (the
client-to-edge leg of the end-to-end estimate, and "misrouted by DNS")."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge.failback import Failback
from edge.observed import Observed
from edge.outlier import OutlierDetector
from edge.routing import AttemptPlan, Decision, Lead, Network, RouteCache, distance_network, draw, hold
from fleet.state import Location, Snapshot, Topology, distance_rtt_ms

CELLS_PER_DEGREE = 4  # client places are memoised per 0.25° cell (about 28 km, under 0.5 ms of RTT)


class Place(Protocol):
    """Where a client is (``edge.geo.ClientPlace``)."""

    @property
    def location(self) -> Location: ...
    @property
    def country(self) -> str | None: ...
    @property
    def continent(self) -> str | None: ...


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
    ) -> None:
        self.topology = topology
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
        self.leads: dict[tuple[str, ...] | None, Lead] = {}  # pin group -> held primary
        self._places: dict[tuple[int, int], ClientView] = {}

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
            routes = self.routes = RouteCache(self.topology, snapshot, network)
        return routes

    def decide(self, place: Place, snapshot: Snapshot) -> Decision:
        """Primary, backup and order of regions for a client at ``place`` (the primary held per pin group)."""
        now = self.clock()
        plan = self.cache(snapshot).plan(
            country=place.country,
            continent=place.continent,
            excluded=self.outliers.ejected_regions(now),
            share=self._shares(snapshot, now),
        )
        old = self.leads.get(plan.pinned)
        lead = hold(old, plan, now=now, rng=self.rng)
        if lead is not old and lead is not None:
            self.leads[plan.pinned] = lead
        return draw(plan, self.rng, None if lead is None else lead.region)

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

    def plan(self, place: Place, snapshot: Snapshot) -> AttemptPlan:
        """The request's whole attempt plan (its replica choices are made as it asks for them)."""
        return AttemptPlan(
            self.decide(place, snapshot),
            replicas=self.replicas,
            outstanding=self.observed.outstanding_in,
            urls=self.urls,
            rng=self.rng,
            max_attempts=self.max_attempts,
        )

    def replicas(self, region: str) -> list[str]:
        """Replicas of ``region`` a request may go to now: serving in the store, admitted by the breakers
        (all serving ones if the breakers admit none: the store's view is the fallback)."""
        routes = self.routes
        if routes is None:
            return []
        serving = routes.serving(region)
        return self.outliers.admitted(region, serving, self.clock()) or serving

    def _shares(self, snapshot: Snapshot, now: float) -> dict[str, float] | None:
        """Regions below full share (recovering or held down), or None when every region is at full share:
        a steady fleet reuses its plans."""
        if self._steady is snapshot:
            return None
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
