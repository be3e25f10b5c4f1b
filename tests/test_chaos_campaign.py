"""The CI fault campaign: a fixed seed, a short campaign on a real local fleet (seed 10: an engine breaking
off its streams in each region in turn, an edge killed, the Redis primary wiped, an edge on a skewed clock,
the control plane killed and restarted) under client load and the operator's dial writes; every invariant
of the checker holds over its history. Runs on its own (`-m campaign`), as `.ci/run` does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from meridian.chaos.checker import check
from meridian.chaos.history import History
from meridian.chaos.main import run
from meridian.chaos.options import add_arguments

SEED = 10


@pytest.mark.campaign
@pytest.mark.timeout(240)
def test_a_short_campaign_keeps_every_invariant(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--seed", str(SEED), "--steps", "6", "--duration", "45", "--rate", "6", "--out", str(tmp_path)]
    )
    code = run(args)
    history = History.read((tmp_path / "history.jsonl").read_text().splitlines())
    verdicts = check(history)
    print("\n" + (tmp_path / "verdict.txt").read_text())
    assert len(history.faults) == 6 and history.requests and history.writes and history.samples
    assert all(v.passed for v in verdicts), [x for v in verdicts for x in v.violations[:3]]
    assert code == 0
