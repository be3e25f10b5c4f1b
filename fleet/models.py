"""The model catalog (pure, no I/O): the models and LoRA adapters regions.yaml declares, and which replicas
serve which. An empty catalog is the open world: every replica serves whatever model a client names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NANO = 1_000_000_000  # nano-dollars in a dollar: what spend is counted in (fleet.spend)


def per_token_nusd(usd_per_mtok: float) -> int:
    """Nano-dollars a token costs at ``usd_per_mtok`` dollars per million tokens."""
    return round(usd_per_mtok * 1000)


def cost_nusd(prompt: int, completion: int, input_per_mtok: float, output_per_mtok: float) -> int:
    return prompt * per_token_nusd(input_per_mtok) + completion * per_token_nusd(output_per_mtok)


def usd(nusd: int) -> float:
    return nusd / NANO


Engine = Literal["vllm", "sglang", "tgi", "openai"]  # openai: any other OpenAI-compatible server


class ModelSpec(BaseModel):
    """One servable model: a base model, or a LoRA adapter of one (``base``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base: str | None = Field(default=None, description="a LoRA adapter's base model")
    context_length: int = Field(default=8192, gt=0)
    """prompt plus completion tokens the model takes"""
    input_per_mtok: float = Field(default=0.0, ge=0, description="USD per million prompt tokens")
    output_per_mtok: float = Field(default=0.0, ge=0, description="USD per million completion tokens")
    fallbacks: tuple[str, ...] = Field(
        default=(),
        description="served instead, in order, when no region serving this one is routable or "
        "every attempt at it failed",
    )
    first_token_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="this model's limit to a stream's first event (a big model's prefill may need longer)",
    )
    continuation: Literal["prefill", "none"] | None = Field(
        default=None,
        description="whether a broken-off stream of this model may go on elsewhere from its partial answer: "
        "prefill (the servers take continue_final_message), none (never), unset (by each replica's engine)",
    )

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


@dataclass(frozen=True, slots=True)
class Catalog:
    """Which (region, replica) serves which model (adapters included); built once from the topology."""

    models: Mapping[str, ModelSpec]
    served: Mapping[tuple[str, str], frozenset[str]]  # (region, replica) -> models it serves

    @property
    def open(self) -> bool:
        """No catalog declared: every replica serves every model, nothing is filtered."""
        return not self.models

    def known(self, model: str) -> bool:
        return self.open or model in self.models

    def regions_for(self, model: str) -> frozenset[str]:
        return frozenset(region for (region, _), models in self.served.items() if model in models)

    def serves(self, region: str, replica: str, model: str) -> bool:
        return self.open or model in self.served.get((region, replica), frozenset())

    def fallbacks(self, model: str) -> tuple[str, ...]:
        spec = self.models.get(model)
        return spec.fallbacks if spec is not None else ()

    def context_length(self, model: str | None) -> int | None:
        """The model's context length (None: the open world, or no model named)."""
        spec = self.models.get(model) if model is not None else None
        return spec.context_length if spec is not None else None

    def cost_nusd(self, model: str | None, prompt: int, completion: int) -> int:
        """What ``prompt`` and ``completion`` tokens of ``model`` cost at its prices, in nano-dollars (0: no
        price, an unknown model or the open world)."""
        spec = self.models.get(model) if model is not None else None
        if spec is None:
            return 0
        return cost_nusd(prompt, completion, spec.input_per_mtok, spec.output_per_mtok)

    def first_token_timeout_s(self, model: str | None) -> float | None:
        spec = self.models.get(model) if model is not None else None
        return spec.first_token_timeout_s if spec is not None else None

    def continuation(self, model: str | None) -> bool | None:
        """Whether ``model``'s streams may be continued (None: the catalog does not say; the engine does)."""
        spec = self.models.get(model) if model is not None else None
        if spec is None or spec.continuation is None:
            return None
        return spec.continuation == "prefill"

    def adapter_base(self, model: str) -> str | None:
        spec = self.models.get(model)
        return spec.base if spec is not None else None


def check_catalog(models: Mapping[str, ModelSpec], served: Mapping[tuple[str, str], tuple[str, ...]]) -> None:
    """Every name served is declared; an adapter's base is declared and served beside it; fallbacks exist."""
    for name, spec in models.items():
        if spec.base is not None and (spec.base not in models or models[spec.base].is_adapter):
            raise ValueError(f"models.{name}.base: {spec.base!r} is not a declared base model")
        for fb in spec.fallbacks:
            if fb not in models or fb == name:
                raise ValueError(f"models.{name}.fallbacks: {fb!r} is not another declared model")
    for (region, replica), names in served.items():
        for name in names:
            if name not in models:
                raise ValueError(f"{region}/{replica} serves {name!r}, which models: does not declare")
            base = models[name].base
            if base is not None and base not in names:
                raise ValueError(f"{region}/{replica} serves adapter {name!r} but not its base {base!r}")
