"""The route explainer (I/O: the endpoint ``/_meridian/route``): where a request from a given place, for a
given model and affinity key, would go from this edge, and why — the client's place, the end-to-end
estimate per region, the choice, the replica and every candidate with its engine signals."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from edge.admission.geo import ClientLocator, ClientPlace, GeoLocator
from edge.admission.request import Inference, read
from edge.errors import error, unknown_model
from edge.routing.planner import Planner, Wanted, wanted_of
from edge.routing.ranking import AttemptPlan
from edge.routing.snapshot import SnapshotFeed
from fleet.models import Catalog
from fleet.state import Snapshot


@dataclass(frozen=True, slots=True)
class Explainer:
    """What the explainer reads: this edge's name, its client locator, planner and snapshot feed."""

    edge: str
    clients: ClientLocator
    geo: GeoLocator
    catalog: Catalog
    feed: SnapshotFeed
    fallback: Snapshot
    planner: Planner

    async def explain(self, request: web.BaseRequest) -> web.Response:
        """Where a request would go: ``ip`` (default: the caller), ``model``, and an affinity key
        (``key``: a prompt_cache_key, or ``session``: an X-Session-Id)."""
        raw = request.query.get("ip")
        if raw is None:
            ip, place = self.clients.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))
        else:
            try:
                addr = ipaddress.ip_address(raw.strip())
            except ValueError:
                return error(
                    400, f"query parameter 'ip' is not an IP address: {raw[:64]!r}", kind="meridian_bad_input"
                )
            ip, place = str(addr), self.geo.locate(addr)
        q = request.query
        asked = {"model": q.get("model"), "prompt_cache_key": q.get("key")}
        facts = read(json.dumps({k: v for k, v in asked.items() if v}).encode(), q.get("session"))
        if facts.model is not None and not self.catalog.known(facts.model):
            return unknown_model(facts.model).response()
        wanted = wanted_of(self.catalog, facts.model, facts.key)
        snap = self.feed.current or self.fallback
        plan = self.planner.plan(place, snap, wanted)
        body = {**self._explained(ip, place, snap, plan), **self._choice(facts, plan, snap, wanted)}
        _excluded(body, place)
        if (asked_dial := q.get("what_if")) is not None:
            imagined = _with_dial(snap, asked_dial)
            if isinstance(imagined, str):
                return error(400, imagined, kind="meridian_bad_input")
            d = self.planner.imagine(place, imagined, wanted.model)
            body["what_if"] = {
                "dial": asked_dial,
                "choice": d.primary,
                "backup": d.backup,
                "order": list(d.order),
            }
        return web.json_response(body)

    def _choice(
        self, facts: Inference, plan: AttemptPlan, snap: Snapshot, wanted: Wanted
    ) -> dict[str, object]:
        """The explainer's model filter, affinity key, replica chosen and why, and every candidate region's
        replicas with their engine signals and age, and the replica choice's steps there (what each filter
        kept, each scorer's raw rating, the picker)."""
        model = None if self.catalog.open else facts.model
        first = plan.next()
        serving = None if model is None else sorted(self.planner.cache(snap).regions_serving(model))
        key = None if facts.key is None else {"source": facts.key_source, "key": f"{facts.key:016x}"}
        chosen = (
            None if first is None else {"region": first.region, "replica": first.replica, "why": first.why}
        )
        return {
            "model": None if model is None else {"requested": model, "regions_serving": serving},
            "affinity": key,
            "replica": chosen,
            "candidates": [
                {
                    **c,
                    "replicas": self.planner.describe(str(c["region"]), model),
                    "steps": self.planner.steps(str(c["region"]), wanted),
                }
                for c in plan.candidates()
            ],
        }

    def _explained(
        self, ip: str | None, place: ClientPlace, snap: Snapshot, plan: AttemptPlan
    ) -> dict[str, object]:
        """The route explainer's answer: where the client is, the end-to-end estimate per region (client to
        this edge + this edge to the region + service), the choice, and whether DNS sent it here wrongly."""
        d = plan.decision
        view = self.planner.client_view(place)
        located = place.source == "geoip"
        scores = []
        for s in d.scores:
            row = s.as_dict()
            if located and row["score_ms"] is not None:
                row["end_to_end_ms"] = round(view.client_edge_ms + s.score_ms, 2)
            scores.append(row)
        return {
            "ip": ip,
            "location": {
                "lat": place.location.lat,
                "lon": place.location.lon,
                "country": place.country,
                "continent": place.continent,
                "source": place.source,
            },
            "edge": self.edge,
            "client_edge_ms": round(view.client_edge_ms, 2) if located else None,
            "misrouted": {"nearer_edge": view.misrouted, "nearer_edge_ms": round(view.nearest_edge_ms, 2)}
            if located and view.misrouted
            else None,
            "snapshot_version": snap.version if snap.version >= 0 else None,
            "panic": d.panic,
            "choice": d.primary,
            "backup": d.backup,
            "order": list(d.order),
            "pinned": list(d.pinned) if d.pinned is not None else None,
            "scores": scores,
            "candidates": plan.candidates(),
        }


def _with_dial(snap: Snapshot, asked: str) -> Snapshot | str:
    """``snap`` with one region's dial changed (``region=weight``), or why that cannot be."""
    region, _, raw = asked.partition("=")
    state = snap.regions.get(region.strip())
    if state is None or not raw.strip().isdigit() or not 0 <= int(raw) <= 100:
        return f"query parameter 'what_if' must be region=dial (0-100) of a known region: {asked[:64]!r}"
    regions = {**snap.regions, state.name: state.model_copy(update={"weight": int(raw)})}
    return dataclasses.replace(snap, regions=regions)


def _excluded(body: dict[str, Any], place: ClientPlace) -> None:
    """Say why a region the scores rate well is no candidate: a data-residency pin, or the model."""
    pinned, model = body["pinned"], body["model"]
    serving = None if model is None else model["regions_serving"]
    for row in body["scores"]:
        if row["why_not"] is not None:
            continue
        if pinned is not None and row["region"] not in pinned:
            where = place.country or place.continent
            row["why_not"] = f"outside the data-residency pin for {where}: {', '.join(pinned)}"
        elif serving is not None and row["region"] not in serving:
            row["why_not"] = f"does not serve {model['requested']}"
