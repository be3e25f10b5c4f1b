"""The shipped Grafana dashboard (docs/grafana/meridian.json): it imports (a datasource input, panels laid on
Grafana's 24-column grid without overlap), every query names only metrics and labels the code exports
(the metrics reference), promtool parses every query, and every metric an alert fires on is charted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fleet import ROOT
from tests.metrics_reference import exported, unknown

DASHBOARD = ROOT / "docs" / "grafana" / "meridian.json"
PROMTOOL = shutil.which("promtool")
GRAFANA_VARIABLES = {"$__rate_interval": "5m"}  # what Grafana puts in the queries before they run


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queries() -> list[tuple[str, str]]:
    """(panel title, query) for every query of every chart."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_the_dashboard_imports_with_its_datasource_and_a_grid_without_overlap() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] == "Meridian"
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and p["description"], p["title"]


def test_every_query_names_exported_metrics_and_labels() -> None:
    metrics = exported()
    found = queries()
    assert len(found) >= 25
    for title, expr in found:
        assert not unknown(expr, metrics), (title, unknown(expr, metrics))


def test_every_metric_an_alert_fires_on_is_charted() -> None:
    rules = yaml.safe_load((ROOT / "docs" / "alerts.rules.yml").read_text())["groups"]
    alerted = {m for g in rules for r in g["rules"] for m in re.findall(r"meridian_\w+", r["expr"])}
    charted = {m for _, expr in queries() for m in re.findall(r"meridian_\w+", expr)}
    assert alerted <= charted, alerted - charted


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus; .ci/run installs it)")
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = []
    for n, (_, expr) in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
