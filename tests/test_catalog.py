"""The model catalog (``fleet.models.Catalog``), as a table: what is known, its fallbacks, context length,
adapter base and price, in the declared and the open world."""

from __future__ import annotations

import pytest

from fleet.models import Catalog, ModelSpec, check_catalog

MODELS = {
    "base": ModelSpec(context_length=1000, input_per_mtok=1.0, output_per_mtok=2.0),
    "big": ModelSpec(context_length=4000, fallbacks=("base",)),
    "lora": ModelSpec(base="base", input_per_mtok=3.0),
}
CATALOG = Catalog(MODELS, {("r", "x"): frozenset({"base", "lora"})})
OPEN = Catalog({}, {})

# (catalog, model, known, fallbacks, context length, adapter base, cost of 1M prompt + 1M completion, nUSD)
ROWS = [
    (CATALOG, "base", True, (), 1000, None, 3_000_000_000),
    (CATALOG, "big", True, ("base",), 4000, None, 0),
    (CATALOG, "lora", True, (), 8192, "base", 3_000_000_000),
    (CATALOG, "nope", False, (), None, None, 0),
    (OPEN, "anything", True, (), None, None, 0),
]


@pytest.mark.parametrize(("catalog", "model", "known", "fallbacks", "context", "base", "cost"), ROWS)
def test_the_catalog_table(
    catalog: Catalog,
    model: str,
    known: bool,
    fallbacks: tuple[str, ...],
    context: int | None,
    base: str | None,
    cost: int,
) -> None:
    assert catalog.known(model) is known
    assert catalog.fallbacks(model) == fallbacks
    assert catalog.context_length(model) == context
    assert catalog.adapter_base(model) == base
    assert catalog.cost_nusd(model, 1_000_000, 1_000_000) == cost


@pytest.mark.parametrize(
    ("models", "served", "error"),
    [
        ({"a": ModelSpec(base="zz")}, {}, "models.a.base"),
        ({"a": ModelSpec(fallbacks=("a",))}, {}, "models.a.fallbacks"),
        ({"a": ModelSpec(fallbacks=("zz",))}, {}, "models.a.fallbacks"),
    ],
)
def test_a_catalog_that_contradicts_itself_is_refused(
    models: dict[str, ModelSpec], served: dict[tuple[str, str], tuple[str, ...]], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        check_catalog(models, served)


def test_who_serves_what() -> None:
    assert CATALOG.serves("r", "x", "lora") and not CATALOG.serves("r", "x", "big")
    assert CATALOG.regions_for("base") == frozenset({"r"}) and OPEN.serves("r", "x", "whatever")
