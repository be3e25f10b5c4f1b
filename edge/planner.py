"""This edge's routing decisions (in memory, no I/O; takes the clock and the random source): one request's
place and the current snapshot in, its ``AttemptPlan`` out — the store's view, this edge's passive ejections
and failback ramps folded in, through the one route cache of the current snapshot."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from edge.failback import Failback
from edge.observed import Observed
from edge.outlier import OutlierDetector
from edge.routing import AttemptPlan, Decision, RouteCache
from fleet.state import Location, Snapshot, Topology


class Place(Protocol):
    """Where a client is (``edge.geo.ClientPlace``)."""

    @property
    def location(self) -> Location: ...
    @property
    def country(self) -> str | None: ...
    @property
    def continent(self) -> str | None: ...


class Planner:
    def __init__(
        self,
        *,
        topology: Topology,
        outliers: OutlierDetector,
        failback: Failback,
        observed: Observed,
        rng: random.Random,
        clock: Callable[[], float],
        max_attempts: int,
    ) -> None:
        self.topology = topology
        self.outliers = outliers
        self.failback = failback
        self.observed = observed
        self.rng = rng
        self.clock = clock
        self.max_attempts = max_attempts
        self.urls = {r.name: {rep.name: rep.base_url for rep in r.replicas} for r in topology.regions}
        self.routes: RouteCache | None = None
        self._steady: Snapshot | None = None  # the snapshot under which no region is ramping or held down

    def cache(self, snapshot: Snapshot) -> RouteCache:
        """The route cache of ``snapshot``: a new snapshot gets a new one, the old one is dropped with it."""
        routes = self.routes
        if routes is None or routes.snapshot is not snapshot:
            routes = self.routes = RouteCache(self.topology, snapshot)
        return routes

    def decide(self, place: Place, snapshot: Snapshot) -> Decision:
        """Primary, backup and order of regions for a client at ``place``."""
        now = self.clock()
        return self.cache(snapshot).route(
            client=place.location,
            country=place.country,
            continent=place.continent,
            rng=self.rng,
            excluded=self.outliers.ejected_regions(now),
            share=self._shares(snapshot, now),
        )

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
