"""Engine load signals (pure, no I/O): one set of fields whatever the engine (``controlplane.engines`` maps
vLLM's, SGLang's and TGI's metrics to them), published through the replicated store for the edges. Every
record carries the wall-clock time of its scrape: an edge ignores a record older than its limit."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class EngineSignals(BaseModel):
    """One replica's engine load, as last scraped."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    running: float = Field(default=0.0, ge=0)
    waiting: float = Field(default=0.0, ge=0)
    kv_usage: float | None = Field(default=None, ge=0, le=1.0)
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    max_lora: int | None = Field(default=None, ge=0)
    ttft_sum_s: float = Field(default=0.0, ge=0, exclude=True)  # the control plane's own use
    ttft_count: float = Field(default=0.0, ge=0, exclude=True)
    at: float = 0.0  # unix time of the scrape

    def saturated(self, *, max_waiting: float, max_kv: float) -> bool:
        return self.waiting >= max_waiting or (self.kv_usage is not None and self.kv_usage >= max_kv)

    def has_adapter(self, adapter: str) -> bool:
        return adapter in self.running_adapters or adapter in self.waiting_adapters

    def free_adapter_slot(self) -> bool:
        return (
            self.max_lora is None
            or len(set(self.running_adapters) | set(self.waiting_adapters)) < self.max_lora
        )


def signal_key(region: str, replica: str) -> str:
    return f"{region}/{replica}"


def decode_signals(raw: Mapping[str | bytes, str | bytes]) -> dict[tuple[str, str], EngineSignals]:
    """The published records; one that does not decode is left out (the edge falls back for that replica)."""
    out: dict[tuple[str, str], EngineSignals] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        region, _, replica = name.partition("/")
        try:
            out[(region, replica)] = EngineSignals.model_validate_json(value)
        except ValueError:
            continue
    return out
