"""The benchmark that measures the request path still runs as documented: bench/proxy's shortest run, end to
end, prints a figure for every path (.ci/run: -m bench, on the machine alone: wrk's load would skew the
timing-bound tests beside it)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.fleet import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.bench, pytest.mark.timeout(600)]

PATHS = (
    *("direct", "nginx", "naive aiohttp", "aiohttp + pool floor"),
    *("edge x1", "edge x1, keys + limits + budget", "edge x2"),
)


def table(out: str, first_cell: str) -> dict[str, list[str]]:
    """The Markdown table whose header row starts with ``first_cell``: column name -> its cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [line.strip("|").split("|") for line in lines[start:end]]
    header, body = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[2:]]
    assert all(len(r) == len(header) for r in body), rows
    return {name: [r[i] for r in body] for i, name in enumerate(header)}


def test_bench_proxy_runs_end_to_end_with_a_figure_for_every_path() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "proxy"), "--duration", "1", "--rounds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rates = table(res.stdout, "upstream")
    assert rates["upstream"] == ["small", "sse"], rates
    for path in PATHS:
        assert all(float(x) > 0 for x in rates[path]), (path, rates[path])
    cpu = re.search(r"edge x1 small (\d+) µs.*edge x1, keys \+ limits \+ budget sse (\d+) µs", res.stdout)
    assert cpu and all(int(x) > 0 for x in cpu.groups()), res.stdout[-3000:]
    added = table(res.stdout, "path")
    assert added["path"] == ["direct", "nginx", "aiohttp + pool floor", "edge x1"], added
    assert all(float(x) > 0 for x in added["p50 ms"]), added
