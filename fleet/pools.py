"""Autoscaled pools as regions.yaml declares them (pure, no I/O): a region's replicas of one model form a
pool with replica bounds, a target per replica (running + waiting requests, or KV-cache use), a capacity
mix (an on-demand baseline, spot burst up to a share) and hourly prices; ``autoscaling:`` holds the scaling
behaviour (HPA's tolerance, stabilization windows and rate policies, a panic window) and the cost ceilings."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

Metric = Literal["concurrency", "kv_cache"]


class PoolKey(NamedTuple):
    """One pool: a region's replicas of one model (``model`` None: every model, in the open world)."""

    region: str
    model: str | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Target(_Strict):
    """What one replica should carry: running + waiting requests (``concurrency``), or KV-cache use."""

    metric: Metric = "concurrency"
    """concurrency (requests in flight per replica) or kv_cache (KV-cache use)"""
    value: float = Field(gt=0, description="per replica: requests, or a KV-cache fraction (0-1]")

    @model_validator(mode="after")
    def _fraction(self) -> Target:
        if self.metric == "kv_cache" and self.value > 1:
            raise ValueError("target.value of kv_cache is a fraction of the cache: at most 1")
        return self


class PoolSpec(_Strict):
    model: str = Field(min_length=1)
    """the model the pool's replicas serve"""
    min_replicas: int = Field(default=1, ge=0)
    """never fewer (0: scale to zero)"""
    max_replicas: int = Field(ge=1)
    """never more"""
    target: Target
    """what each replica should carry"""
    on_demand_base: int = Field(default=1, ge=0, description="replicas always on demand")
    max_spot_share: float = Field(
        default=0.0, ge=0, le=1, description="of the replicas, at most this on spot"
    )
    price_on_demand_hour: float = Field(ge=0, description="$ per replica-hour, on demand")
    price_spot_hour: float = Field(default=0.0, ge=0, description="$ per replica-hour, spot")
    scale_to_zero: bool = Field(
        default=False, description="min_replicas may be 0: requests wait for the first"
    )
    cold_start_s: float = Field(default=60.0, ge=0, description="how long a new replica takes to serve")

    @model_validator(mode="after")
    def _bounds(self) -> PoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"pool {self.model}: min_replicas {self.min_replicas} > max_replicas")
        if self.min_replicas == 0 and not self.scale_to_zero:
            raise ValueError(f"pool {self.model}: min_replicas 0 needs scale_to_zero: true")
        return self

    def cost_hour(self, on_demand: int, spot: int) -> float:
        return on_demand * self.price_on_demand_hour + spot * self.price_spot_hour


class Autoscaling(_Strict):
    """How pools scale (HPA v2 behaviour fields, Knative's panic window) and what they may cost."""

    interval_s: float = Field(default=5.0, gt=0, description="one decision per pool this often")
    smoothing: float = Field(default=0.5, gt=0, le=1, description="EWMA weight of a new load sample")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="no change within this ratio of target")
    scale_up_stabilization_s: float = Field(default=0.0, ge=0)
    """scale up to the highest recommendation over this window (HPA's behavior)"""
    scale_down_stabilization_s: float = Field(default=300.0, ge=0)
    """scale down to the highest recommendation over this window"""
    scale_up_percent: float = Field(default=100.0, gt=0, description="per period, of the replicas then")
    scale_up_replicas: int = Field(default=4, ge=1, description="per period: whichever allows more")
    scale_up_period_s: float = Field(default=15.0, gt=0)
    """at most one step up per this long"""
    scale_down_percent: float = Field(default=50.0, gt=0, le=100, description="per period")
    scale_down_period_s: float = Field(default=60.0, gt=0)
    """at most one step down per this long"""
    panic_threshold: float = Field(
        default=2.0, gt=1, description="load / (replicas x target) at which to panic"
    )
    panic_window_s: float = Field(default=60.0, ge=0, description="no scale-down this long after a panic")
    cost_ceiling_hour: float | None = Field(default=None, gt=0, description="$ per hour, all pools")
    replace_down_after_s: float = Field(default=60.0, gt=0)
    """a machine that is on, past its cold start, and down to the probes this long is replaced"""
