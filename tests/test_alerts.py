"""The shipped Prometheus alerting rules (docs/alerts.rules.yml): every metric and label they name is one the
code exports (the metrics reference, generated from the registries and kept current by tests/test_docs.py),
each names a runbook that exists, the runbooks list exactly these alerts, and promtool's unit tests of them
pass (each fires on the series of its trouble, not before its ``for``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown.extensions.toc import slugify

from tests.metrics_reference import exported, unknown

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "alerts.rules.yml"
PROMTOOL = shutil.which("promtool")


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def slugs(doc: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (Python-Markdown's toc extension)."""
    return {slugify(h, "-") for h in re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)}


def test_every_alert_names_exported_metrics_and_labels() -> None:
    metrics = exported()
    assert len(metrics) > 40  # the reference was read
    for rule in rules():
        assert not unknown(rule["expr"], metrics), (rule["alert"], unknown(rule["expr"], metrics))


def test_every_alert_has_a_severity_a_summary_and_a_runbook_that_exists() -> None:
    for rule in rules():
        assert re.fullmatch(r"Meridian[A-Z]\w+", rule["alert"]), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule
        assert rule["annotations"]["summary"], rule
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert anchor in slugs(ROOT / "docs" / page), f"{rule['alert']}: no heading #{anchor} in {page}"


def test_the_runbooks_list_exactly_the_shipped_alerts() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    listed = dict(re.findall(r"^\| `(Meridian\w+)` \| (\w+) \|", runbooks, re.M))
    assert listed == {rule["alert"]: rule["labels"]["severity"] for rule in rules()}


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus; .ci/run installs it)")
def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(ROOT / "tests" / "alerts_test.yml")]):
        done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
