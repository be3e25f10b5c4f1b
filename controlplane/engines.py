"""Engines' Prometheus metrics as Meridian's engine signals (pure: text in, signals out). vLLM, SGLang and
TGI name the same things differently; ``ENGINE_METRICS`` maps each family to its field. Parsed with
prometheus_client's text parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from fleet.signals import EngineSignals

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
