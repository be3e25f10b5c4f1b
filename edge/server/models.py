"""``GET /v1/models`` and ``/v1/models/{id}`` at the edge (no region is asked): the catalog's models routable
now that the caller may use, in OpenAI's list format."""

from __future__ import annotations

from aiohttp import web

from edge.admission.admit import Admission
from edge.admission.tenants import Principal
from edge.errors import unknown_model
from edge.routing.planner import Planner
from edge.routing.snapshot import SnapshotFeed
from edge.telemetry.metrics import EdgeMetrics
from fleet.models import Catalog
from fleet.state import Snapshot


class ModelList:
    def __init__(
        self,
        *,
        feed: SnapshotFeed,
        fallback: Snapshot,
        planner: Planner,
        catalog: Catalog,
        admission: Admission,
        metrics: EdgeMetrics,
        edge_headers: dict[str, str],
    ) -> None:
        self.feed, self.fallback, self.planner, self.catalog = feed, fallback, planner, catalog
        self.admission, self.metrics, self.edge_headers = admission, metrics, edge_headers

    async def answer(self, principal: Principal | None, one: str | None = None) -> web.Response:
        """The models routable now that the caller may use, in OpenAI's list format, each with the regions
        that serve it; ``one``: that model alone (404 ``model_not_found`` when it is not among them). A
        tenant's listing counts as one of its requests (``rpm``; 429 when over)."""
        tenant = None if principal is None else principal.tenant
        limiter = self.admission.limiter
        headers = self.edge_headers
        if tenant is not None and limiter is not None and tenant.limits.rpm is not None:
            verdict = limiter.admit_held(tenant, 0) or await limiter.admit(tenant, 0)
            if not verdict.admitted:
                return self.admission.rate_limited(tenant, verdict)
            headers = {**headers, **verdict.headers}
        if tenant is not None:
            self.metrics.tenants.outcome(tenant.id, "ok")
        snap = self.feed.current or self.fallback
        routes = self.planner.cache(snap)
        data = []
        for name, spec in self.catalog.models.items():
            if (tenant is not None and not tenant.may_use(name)) or (one is not None and name != one):
                continue
            regions = sorted(
                r for r in routes.regions_serving(name) if (st := snap.regions.get(r)) and st.routable
            )
            if regions:
                meridian = {"regions": regions, "base": spec.base, "context_length": spec.context_length}
                meridian["fallbacks"] = list(spec.fallbacks)
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "meridian",
                        "meridian": meridian,
                    }
                )
        if one is None:
            return web.json_response({"object": "list", "data": data}, headers=headers)
        if not data:
            return unknown_model(one).response(headers)
        return web.json_response(data[0], headers=headers)
