"""The metrics the code exports, read from the generated metrics reference (docs/reference/metrics.md), and
what a PromQL expression names that none of them has: the shipped alerting rules and Grafana dashboard are
checked with it (tests/test_alerts.py, tests/test_dashboard.py)."""

from __future__ import annotations

import re

from tests.fleet import ROOT

SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus to every series it scrapes
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")  # a histogram's series; its buckets carry `le`


def exported() -> dict[str, set[str]]:
    """Series name -> its labels, from the metrics reference's tables (a histogram: each of its series)."""
    out: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "reference" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `(meridian_\w+)` \| (\w+) \| ([^|]*) \|", line)
        if m is None:
            continue
        name, kind, labels = m.group(1), m.group(2), set(re.findall(r"`(\w+)`", m.group(3)))
        if kind == "histogram":
            for suffix in HISTOGRAM_SERIES:
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            out[name] = labels
    return out


def unknown(expr: str, metrics: dict[str, set[str]]) -> list[str]:
    """What ``expr`` names that is not exported: a metric, a label it matches on, a label it groups by."""
    problems, names = [], set()
    for name, matchers in re.findall(r"(meridian_\w+)(\{[^}]*\})?", expr):
        if name not in metrics:
            problems.append(f"{name} is not exported")
            continue
        names.add(name)
        for label in re.findall(r"(\w+)\s*[=!]~?", matchers):
            if label not in metrics[name] | SCRAPE_LABELS:
                problems.append(f"{name} has no label {label}")
    if not names:
        return problems or ["names no meridian metric"]
    known = set().union(*(metrics[n] for n in names)) | SCRAPE_LABELS
    for grouped in re.findall(r"\b(?:by|without) \(([^)]*)\)", expr):
        problems += [f"grouped by {x}, which none of {sorted(names)} has" for x in _labels(grouped) - known]
    return problems


def _labels(listed: str) -> set[str]:
    return {x.strip() for x in listed.split(",") if x.strip()}
