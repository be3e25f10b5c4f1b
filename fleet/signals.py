"""Engine load signals (pure, no I/O): what the control plane scrapes from each replica's Prometheus metrics,
mapped to one set of fields whatever the engine, and publishes through the replicated store for the edges.

vLLM, SGLang and TGI name them differently; ``ENGINE_METRICS`` maps each name to its field. Every record
carries the wall-clock time of its scrape: an edge ignores a record older than its limit."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from fleet.state import KEY_PREFIX

KEY_SIGNALS = f"{KEY_PREFIX}:state:signals"  # hash: "region/replica" -> EngineSignals JSON

# metric family name -> field (vLLM, then SGLang, then TGI)
ENGINE_METRICS: dict[str, str] = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",  # vLLM before 0.10
    "sglang:num_running_reqs": "running",
    "sglang:num_queue_reqs": "waiting",
    "sglang:token_usage": "kv_usage",
    "tgi_batch_current_size": "running",
    "tgi_queue_size": "waiting",
}
LORA_INFO = "vllm:lora_requests_info"
TTFT_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")


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


def parse_metrics(text: str, *, at: float) -> EngineSignals:
    """An engine's Prometheus text as signals (prometheus_client's parser; unknown families ignored)."""
    fields: dict[str, object] = {"at": at}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        name = ENGINE_METRICS.get(family.name)
        if name is not None:
            sums[name] = sums.get(name, 0.0) + sum(s.value for s in family.samples)
        elif family.name == LORA_INFO and family.samples:
            labels = max(family.samples, key=lambda s: s.value).labels  # the newest: value is a timestamp
            fields["running_adapters"] = _names(labels.get("running_lora_adapters", ""))
            fields["waiting_adapters"] = _names(labels.get("waiting_lora_adapters", ""))
            fields["max_lora"] = int(float(labels.get("max_lora", "0") or 0))
        elif family.name in TTFT_HISTOGRAMS:
            for s in family.samples:
                if s.name.endswith("_sum"):
                    sums["ttft_sum_s"] = sums.get("ttft_sum_s", 0.0) + s.value
                elif s.name.endswith("_count"):
                    sums["ttft_count"] = sums.get("ttft_count", 0.0) + s.value
    if "kv_usage" in sums:
        sums["kv_usage"] = min(1.0, max(0.0, sums["kv_usage"]))
    fields.update(sums)
    return EngineSignals.model_validate(fields)


def _names(csv: str) -> tuple[str, ...]:
    return tuple(sorted(n for n in csv.split(",") if n))


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
