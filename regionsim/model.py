"""The simulator's latency model and fault settings (pure, no I/O; takes a random source)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Faults(BaseModel):
    """What POST /_sim/faults accepts; every field optional, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    error_status: int = Field(default=503, ge=400, le=599, description="what an injected error answers")
    retry_after_s: int | None = Field(default=None, ge=0, le=3600, description="its Retry-After, if any")
    models: list[str] | None = Field(default=None, description="the models errors hit (None: every one)")
    extra_latency_ms: float = Field(default=0.0, ge=0.0, le=600_000)
    tail_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    tail_ttft_ms: float = Field(default=0.0, ge=0.0, le=600_000)
    down: bool = False
    max_model_len: int | None = Field(
        default=None, ge=1, le=10_000_000, description="prompt + max_tokens above this: vLLM's context 400"
    )
    malformed_event_at: int | None = Field(
        default=None, ge=0, le=1_000_000, description="a stream's event at this token is broken JSON"
    )
    content_filter: bool = Field(
        default=False, description="refuse every prompt: 400 content_filter, OpenAI's way"
    )
    reject_prefix: bool = Field(
        default=False, description="refuse continue_final_message (400), as some engines do"
    )
    cut_after_tokens: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="a stream breaks off (connection reset) after this many tokens",
    )
    fail_first: int = Field(
        default=0, ge=0, le=1_000_000, description="the next N requests answer error_status, then all is well"
    )
    reset: bool = Field(default=False, description="the connection is reset before any header")
    stall_after_tokens: int | None = Field(
        default=None, ge=0, le=1_000_000, description="a stream pauses after this many tokens"
    )
    stall_s: float = Field(default=3600.0, ge=0.0, le=86_400, description="for this long, then goes on")
    no_done: bool = Field(default=False, description="a stream ends without its final `data: [DONE]`")
    end_after_tokens: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="a stream ends cleanly after this many tokens: no finish reason, no [DONE]",
    )
    down_for_s: float | None = Field(
        default=None,
        ge=0.0,
        le=86_400,
        description="down (every connection reset) for this long from now, then healthy again",
    )


class Power(BaseModel):
    """What POST /_sim/power accepts: the replica's machine on or off (the autoscaler's simulator backend).
    Switched on, it serves after ``cold_start_s``; switched off, it finishes what it runs and takes nothing
    new (a spot interruption: the same, ``capacity`` says which kind of machine it is)."""

    model_config = ConfigDict(extra="forbid")

    on: bool
    cold_start_s: float = Field(default=0.0, ge=0.0, le=3600)
    capacity: Literal["on_demand", "spot"] = "on_demand"


class Notice(BaseModel):
    """What POST /_sim/notice accepts: the cloud reclaims this (spot) machine in ``in_s`` seconds (AWS gives
    two minutes). ``GET /_sim/notice`` then answers as EC2's ``spot/instance-action`` metadata does; at that
    time the machine goes: whatever it still runs is cut."""

    model_config = ConfigDict(extra="forbid")

    in_s: float = Field(default=120.0, ge=0.0, le=3600)
    action: Literal["terminate", "stop"] = "terminate"


@dataclass(frozen=True, slots=True)
class LatencyModel:
    ttft_ms: float = 50.0
    per_token_ms: float = 5.0
    prefill_ms_per_1k: float = 40.0  # prompt tokens not found in the prefix cache cost this per thousand
    jitter: float = 0.1  # ± fraction on each delay
    batch_slowdown: float = 0.5  # a full batch decodes each token this much slower

    def ttft(self, faults: Faults, rng: random.Random) -> float:
        """Seconds until the first token for one request."""
        base = self.ttft_ms
        if faults.tail_ratio > 0 and rng.random() < faults.tail_ratio:
            base = faults.tail_ttft_ms or base * 10
        base += faults.extra_latency_ms
        return max(0.0, base * (1 + rng.uniform(-self.jitter, self.jitter))) / 1000.0

    def prefill(self, uncached_tokens: int) -> float:
        """Seconds of prefill for the prompt tokens the prefix cache did not have."""
        return max(0, uncached_tokens) * self.prefill_ms_per_1k / 1_000_000.0

    def per_token(self, rng: random.Random, *, batch: int = 1, max_batch: int = 1) -> float:
        """Seconds between two tokens, slower as the batch fills (decode shares the GPU)."""
        crowd = 1.0 + self.batch_slowdown * max(0, batch - 1) / max(1, max_batch)
        return max(0.0, self.per_token_ms * crowd * (1 + rng.uniform(-self.jitter, self.jitter))) / 1000.0
