"""The shared contract between control plane and edges (pure, no I/O).

Topology (what regions.yaml declares), RegionState (what the store holds per region), Snapshot (what an
edge routes on), Applied (what an edge reports it applied), their encoding (the Redis key names are in
fleet.keys), and how positions order: what is newer, whether the store went back. Both sides import it;
it imports neither.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from fleet.models import Catalog, Engine, ModelSpec, check_catalog
from fleet.pools import Autoscaling, PoolSpec

Health = Literal["up", "degraded", "down"]

# Redis key names (one namespace, so a shared Redis can hold several Meridians under other prefixes).


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Location(_Strict):
    """A point on the globe (degrees)."""

    lat: float = Field(ge=-90, le=90)
    """latitude, degrees"""
    lon: float = Field(ge=-180, le=180)
    """longitude, degrees"""


class Replica(_Strict):
    """One serving endpoint (a vLLM/TGI/SGLang deployment) inside a regional cluster."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """the replica's name, unique in its region"""
    url: HttpUrl
    """its base URL (each URL once in the file)"""
    serves: tuple[str, ...] | None = Field(default=None, description="models served (default: the region's)")
    engine: Engine | None = Field(default=None, description="inference engine (default: the region's)")

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")


class Region(_Strict):
    """A regional cluster as declared in regions.yaml."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9-]+$")
    """the region's name (its edge's MERIDIAN_REGION)"""
    location: Location
    """where it is"""
    failure_domain: str = ""
    """regions sharing one fail together (the backup is taken from another)"""
    capacity: int = Field(gt=0, description="max concurrent requests the region serves")
    weight: int = Field(default=100, ge=0, le=100, description="default traffic dial")
    replicas: tuple[Replica, ...] = Field(
        min_length=1, description="one is allowed: a retry then goes elsewhere"
    )
    serves: tuple[str, ...] | None = Field(
        default=None, description="models its replicas serve (default: all)"
    )
    engine: Engine = "vllm"
    """the serving engine: vllm, sglang, tgi, or openai (a plain OpenAI-compatible server: probed on
    GET /v1/models, never scraped)"""
    pools: tuple[PoolSpec, ...] = Field(default=(), description="autoscaled pools, one per model")
    cost_ceiling_hour: float | None = Field(default=None, gt=0, description="$ per hour, this region's pools")

    @model_validator(mode="after")
    def _unique_replicas(self) -> Region:
        names = [r.name for r in self.replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique within region {self.name}")
        return self

    @property
    def domain(self) -> str:
        return self.failure_domain or self.name

    def engine_of(self, replica: Replica) -> Engine:
        """The engine ``replica`` runs: its own, else the region's."""
        return replica.engine or self.engine


# OpenAI's inference API: what an edge forwards unless regions.yaml says otherwise
INFERENCE_ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("POST",),
    "/v1/completions": ("POST",),
    "/v1/embeddings": ("POST",),
    "/v1/responses": ("POST",),
    "/v1/models": ("GET",),
}


class Policy(_Strict):
    """Routing policy knobs shared by every edge."""

    default_ttft_ms: float = Field(default=250.0, gt=0)
    """a region's time to first token before any is measured"""
    fibre_km_per_ms: float = Field(default=200.0, gt=0)
    """light in fibre: distance to round-trip time"""
    path_inflation: float = Field(default=1.5, ge=1.0)
    """real paths over great-circle distance"""
    degraded_penalty_ms: float = Field(default=300.0, ge=0)
    """added to a degraded region's score"""
    max_utilization: float = Field(default=0.97, gt=0, le=1.0)
    """a region busier than this is not routable"""
    tie_margin: float = Field(default=0.05, ge=0, le=1.0)
    """regions within this share of the best score are a tie (drawn by softmin)"""
    brownout_min_share: float = Field(default=0.05, ge=0, le=1.0)
    """the least share of its dial a browned-out region keeps"""
    brownout_tolerance: float = Field(
        default=0.5, ge=0, description="TTFT up to baseline x (1 + this) is normal"
    )
    brownout_min_excess_ms: float = Field(default=50.0, ge=0, description="... and up to baseline + this")
    panic_threshold: float = Field(default=0.5, ge=0, le=1.0)
    """below this share of routable regions, health is ignored (panic mode)"""
    switch_margin_ratio: float = Field(
        default=0.2, ge=0, description="a challenger must beat the incumbent by this share of its score ..."
    )
    switch_margin_ms: float = Field(default=20.0, ge=0, description="... and by at least this many ms ...")
    switch_hold_s: float = Field(default=5.0, ge=0, description="... for this long before the primary moves")
    settle_hold_s: float = Field(
        default=0.5,
        ge=0,
        description="a primary forced by a loss yields once within switch_hold_s to a region better by more "
        "than tie_margin for this long",
    )
    misroute_margin_ms: float = Field(
        default=30.0, ge=0, description="a client this much nearer (RTT) to another edge was misrouted by DNS"
    )
    pins: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """country or continent code -> the regions its clients must be served in (data residency)"""
    hedgeable_routes: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")
    """the routes critical requests may be hedged on"""
    inference_routes: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(INFERENCE_ROUTES),
        description="path -> methods the edge forwards; anything else is 404 at the edge (engines' admin and "
        "debug routes never reach a region)",
    )

    @field_validator("inference_routes")
    @classmethod
    def _routes(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for path, methods in v.items():
            if not path.startswith("/") or "?" in path:
                raise ValueError(f"route {path!r} must be a path starting with / (no query)")
            if not methods:
                raise ValueError(f"route {path!r} names no method")
        return {path: tuple(m.upper() for m in methods) for path, methods in v.items()}

    @field_validator("pins")
    @classmethod
    def _upper_keys(cls, v: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {k.upper(): tuple(regions) for k, regions in v.items()}


class Topology(_Strict):
    """The whole of regions.yaml."""

    policy: Policy = Field(default_factory=Policy)
    """how regions are scored and chosen"""
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="the model catalog (none: open)")
    regions: tuple[Region, ...] = Field(min_length=1)
    """the regional clusters (at least one)"""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    """the autoscaler's defaults"""

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        names = [r.name for r in self.regions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"region names must be unique: {', '.join(twice)} appear more than once")
        urls = [rep.base_url for r in self.regions for rep in r.replicas]
        same = sorted({u for u in urls if urls.count(u) > 1})
        if same:  # one server declared twice would count double in every balance and every breaker
            raise ValueError(f"replica URLs must be unique: {', '.join(same)} appear more than once")
        for key, pinned in self.policy.pins.items():
            unknown = [p for p in pinned if p not in names]
            if unknown:
                raise ValueError(f"policy.pins.{key} names unknown region(s) {unknown}")
        if self.models:
            check_catalog(self.models, self._served())
        self._check_pools()
        return self

    def _check_pools(self) -> None:
        """A pool's model is one its region serves, its replicas are the slots of that region serving it (a
        scaled-down slot is off), one pool per model, and its minimum fits under the cost ceilings."""
        served = self._served()
        for r in self.regions:
            models = [p.model for p in r.pools]
            if len(set(models)) != len(models):
                raise ValueError(f"region {r.name}: one pool per model")
            for p in r.pools:
                slots = [
                    rep.name for rep in r.replicas if not self.models or p.model in served[(r.name, rep.name)]
                ]
                self._check_shared(r.name, p, {slot: served[(r.name, slot)] for slot in slots})
                if not slots or p.max_replicas > len(slots):
                    raise ValueError(
                        f"region {r.name}: pool {p.model} has max_replicas {p.max_replicas} but {len(slots)} "
                        "replica slots serve that model"
                    )
            floor = sum(p.cost_hour(p.min_replicas, 0) for p in r.pools)
            if r.cost_ceiling_hour is not None and floor > r.cost_ceiling_hour:
                raise ValueError(
                    f"region {r.name}: its pools' minimum costs {floor:g} $/h, above its ceiling"
                )

    def _check_shared(self, region: str, p: PoolSpec, slots: Mapping[str, tuple[str, ...]]) -> None:
        """A pool's slots serve its model and adapters over it, nothing else — switching a slot off takes
        every model it serves — unless the pool holds all of them on demand (min = max = slots, no spot)."""
        if not self.models or (p.min_replicas == p.max_replicas == len(slots) and p.max_spot_share == 0):
            return
        for slot, models in slots.items():
            others = [m for m in models if m != p.model and self.models[m].base != p.model]
            if others:
                raise ValueError(
                    f"region {region}: replica {slot} of pool {p.model} also serves {', '.join(others)}, "
                    f"which scaling it down would take too: give it serves: [{p.model}] (and adapters over "
                    "it), or hold the pool at all its slots on demand (min = max = slots, no spot)"
                )

    def _served(self) -> dict[tuple[str, str], tuple[str, ...]]:
        every = tuple(self.models)
        return {
            (r.name, rep.name): rep.serves if rep.serves is not None else r.serves or every
            for r in self.regions
            for rep in r.replicas
        }

    @functools.cached_property
    def catalog(self) -> Catalog:
        """Which replica serves which model (empty: the open world, every replica serves every model)."""
        return Catalog(self.models, {k: frozenset(v) for k, v in self._served().items()})

    def region(self, name: str) -> Region | None:
        return self.by_name.get(name)

    @functools.cached_property
    def by_name(self) -> dict[str, Region]:
        return {r.name: r for r in self.regions}

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @functools.cached_property
    def domains(self) -> dict[str, str]:
        """Region name -> failure domain."""
        return {r.name: r.domain for r in self.regions}


class RegionState(BaseModel):
    """The mutable, versioned state of one region as the store holds it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    weight: int = Field(default=100, ge=0, le=100)
    drained: bool = False
    health: Health = "up"
    replicas: dict[str, Health] = Field(default_factory=dict)
    utilization: float = Field(default=0.0, ge=0.0)
    starting: int = Field(default=0, ge=0)  # replicas switched on and not up yet: capacity that is coming
    latency_ms: float | None = None  # service time: time to first token where the region is (no network)
    latency_source: Literal["engine", "edges"] | None = None  # the engine's TTFT metric, or edges' TTFT - RTT
    baseline_ms: float | None = None  # slow-moving normal TTFT: brown-outs are measured against it
    updated_at: float = 0.0
    version: int = 0

    def encode(self) -> str:
        return self.model_dump_json()

    @classmethod
    def decode(cls, raw: str | bytes) -> RegionState:
        return cls.model_validate_json(raw)

    @property
    def routable(self) -> bool:
        return self.weight > 0 and not self.drained and self.health != "down"

    @property
    def planned_utilization(self) -> float:
        """Utilization against the capacity the region will have once the replicas it is starting are up
        (the same load over more replicas): a region scaling up keeps its clients, and wins back those it
        spilled, instead of losing them to a region that has already scaled."""
        util = max(0.0, self.utilization)
        if self.starting <= 0:
            return util
        serving = sum(1 for h in self.replicas.values() if h != "down") or 1  # as the prober counts them
        return util * serving / (serving + self.starting)


def initial_state(region: Region, *, now: float) -> RegionState:
    """The state a region gets when it first appears in the store."""
    return RegionState(
        name=region.name,
        weight=region.weight,
        replicas={r.name: "up" for r in region.replicas},
        updated_at=now,
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable view of every region's state at one store (epoch, version)."""

    version: int
    regions: Mapping[str, RegionState]
    taken_at: float = field(default=0.0)  # time.monotonic() when read
    epoch: int = 0
    quarantined: frozenset[str] = frozenset()  # regions whose stored record was invalid (carried over)

    def routable(self) -> list[str]:
        return [n for n, s in self.regions.items() if s.routable]

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, version): snapshots are ordered by it; an edge never goes back."""
        return self.epoch, self.version


REPORT_SILENT_S = 10.0  # an edge reports every observation interval (1 s by default): silent past this


@dataclass(frozen=True, slots=True)
class Applied:
    """What one edge reports it applied last (the hash ``fleet.keys.applied_key`` names, re-written every
    observation interval): its snapshot's position and when it applied it, its key set's position (None:
    API keys off or not loaded yet), where its route explainer listens."""

    position: tuple[int, int]  # (epoch, version) of the snapshot
    at: float  # wall time it was applied
    keys: tuple[int, int] | None = None  # (epoch, tenants version) of the key set
    explain: str = ""
    reported: float = 0.0  # wall time of this report, on the edge's clock (0: not said)

    def fields(self) -> dict[str, str | int]:
        out: dict[str, str | int] = {
            "epoch": self.position[0],
            "version": self.position[1],
            "at": int(self.at * 1000),
            "explain": self.explain,
        }
        if self.keys is not None:
            out |= {"keys_epoch": self.keys[0], "keys_version": self.keys[1]}
        if self.reported:
            out["reported"] = int(self.reported * 1000)
        return out

    def silent(self, now: float) -> bool:
        """The edge stopped reporting: down, or cut off from the primary (its clock against ``now``)."""
        return bool(self.reported) and now - self.reported > REPORT_SILENT_S

    @classmethod
    def parse(cls, row: Mapping[bytes, bytes] | Mapping[str, str]) -> Applied | None:
        """The report in ``row`` (an HGETALL), or None if there is none or it is not one."""
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in row.items()
        }
        try:
            keys = (int(f["keys_epoch"]), int(f["keys_version"])) if "keys_version" in f else None
            return cls(
                (int(f.get("epoch", 0)), int(f["version"])),
                int(f["at"]) / 1000,
                keys,
                f.get("explain", ""),
                int(f.get("reported", 0)) / 1000,
            )
        except (KeyError, ValueError):
            return None


StoreStanding = Literal["current", "behind", "ahead"]


def standing(store: tuple[int, int], keys: tuple[int, int], report: Applied) -> StoreStanding:
    """Where an edge stands against the store: ``current`` (it applied what the store holds), ``behind``
    (not yet: its replica lags, or it is cut off) or ``ahead`` (the store went back: see ``went_back``)."""
    if report.position > store or (report.keys is not None and report.keys > keys):
        return "ahead"
    if report.position < store or (report.keys is not None and report.keys < keys):
        return "behind"
    return "current"


def went_back(
    store: tuple[int, int], keys: tuple[int, int], reports: Mapping[str, Applied]
) -> tuple[str, str] | None:
    """(the edge, what) that applied a state newer than the store's position ``store`` or a key set newer than
    ``keys`` — the store went back (restored from an older backup, or writes lost) — or None."""
    for edge, report in sorted(reports.items()):
        if standing(store, keys, report) == "ahead":
            what, newer = (
                ("snapshot", report.position) if report.position > store else ("key set", report.keys)
            )
            assert newer is not None
            return edge, f"its {what} at epoch/version {newer[0]}/{newer[1]}"
    return None


def next_epoch(now: float, reports: Mapping[str, Applied], *, after: int = 0) -> int:
    """A new epoch: the time in milliseconds, and newer than ``after`` and than any epoch an edge reports
    (a control plane whose clock is behind the one that began the old epoch still starts a newer one)."""
    seen = [r.position[0] for r in reports.values()] + [r.keys[0] for r in reports.values() if r.keys]
    return max(int(now * 1000), after + 1, *(e + 1 for e in seen))


def why_invalid(exc: ValueError) -> str:
    """One line naming the field that made a stored record invalid."""
    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        field_name = ".".join(str(p) for p in err["loc"]) or "record"
        return f"{field_name}: {err['msg']}"[:200]
    return str(exc).splitlines()[0][:200]


def decode_records(raw: Mapping[str | bytes, str | bytes]) -> tuple[dict[str, RegionState], dict[str, str]]:
    """Region records as stored: the valid ones, and for each invalid one what is wrong with it (a bad
    record never hides the others)."""
    regions: dict[str, RegionState] = {}
    invalid: dict[str, str] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        try:
            state = RegionState.decode(value)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            invalid[name] = why_invalid(exc)
            continue
        if state.name != name:
            invalid[name] = f"record names region {state.name!r}"
            continue
        regions[name] = state
    return regions, invalid


def great_circle_km(a: Location, b: Location) -> float:
    """Haversine distance in kilometres."""
    r = 6371.0
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp = p2 - p1
    dl = math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(h)))


def distance_rtt_ms(a: Location, b: Location, policy: Policy) -> float:
    """Round-trip estimate from distance: great circle at fibre speed, times the path inflation, twice."""
    return 2.0 * great_circle_km(a, b) * policy.path_inflation / policy.fibre_km_per_ms


def change_message(*, version: int, region: str) -> str:
    return json.dumps({"version": version, "region": region})
