"""The README's two commands together, as a reader runs them (issue: "the first hour"): demo A on the default
base port, a second demo B and the test suite started beside it, then the guided tour word for word against
A. Real processes throughout. The nested suite leaves this file out (it would start itself), the campaign,
and the tests marked slow: what it checks is that the suite's fleets and the demos' do not collide (ports,
files, processes), which the fast tests' fleets show as well; CI runs the whole suite on its own just before
(`.ci/run`), so the slow ones are not run twice for nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meridian.cli import DEFAULT_BASE_PORT
from meridian.redisproc import free_block, port_free
from tests.fleet import ROOT
from tests.test_demo import start_demo, stop_and_check_no_orphans, tour_commands

pytestmark = [pytest.mark.slow, pytest.mark.first_hour, pytest.mark.timeout(1800)]  # it nests a whole run


def run_tour(env: dict[str, str]) -> None:
    """Every tour command exactly as the README prints it (the default ports, `meridian ctl` unaided)."""
    for cmd in tour_commands():
        res = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if res.returncode != 0 and " | grep" in cmd:  # what the grep did not find: the answer itself
            seen = subprocess.run(
                ["bash", "-c", cmd.split(" | grep")[0]], cwd=ROOT, env=env, capture_output=True, text=True
            )
            res.stderr += f"\nbefore its grep, run again:\n{seen.stdout[:3000]}{seen.stderr[:1000]}"
        assert res.returncode == 0, (
            f"tour command failed beside a second demo and a test run: {cmd}\n{res.stderr}"
        )


def settled(base: int, timeout: float = 90.0) -> None:
    """Wait until the us-east-1 and eu-west-1 edges each choose their own region for a London client again.
    Under the suite the demo's simulators are starved of CPU: their measured service times rise, an edge's
    primary may move (as it should), and it moves back once the region is better again by the switch margin
    for the switch hold, as the service times' averages come down — routing's hysteresis, not a collision."""
    edges = {"us-east-1": base + 50, "eu-west-1": base + 52}  # their internal listeners
    deadline, seen = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        for region, port in edges.items():
            url = f"http://127.0.0.1:{port}/_meridian/route?ip=81.2.69.142"
            with urllib.request.urlopen(url, timeout=5) as r:
                seen[region] = json.load(r)
        if all(seen[region]["choice"] == region for region in edges):
            return
        time.sleep(0.5)
    pytest.fail(f"the demo's edges did not settle back home within {timeout:g} s: {json.dumps(seen)[:3000]}")


def test_demo_a_then_demo_b_and_the_whole_suite_beside_it_then_the_tour_against_a(tmp_path: Path) -> None:
    if not all(port_free(p) for p in range(DEFAULT_BASE_PORT, DEFAULT_BASE_PORT + 60)):
        pytest.skip(f"ports {DEFAULT_BASE_PORT}+ are taken on this machine (a reader's own demo?)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    demo_a, _, _ = start_demo(DEFAULT_BASE_PORT)
    try:
        demo_b, _, _ = start_demo(free_block(60))
        try:
            suite = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-n",
                    "2",  # the load it was measured with beside two demos (the README's run uses 3)
                    "-p",
                    "no:cacheprovider",
                    "-m",
                    "not first_hour and not campaign and not slow",
                ],
                cwd=ROOT,
                env=env,
                stdout=(tmp_path / "suite.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            try:
                run_tour(env)  # while the suite runs beside it
                code = suite.wait(timeout=1500)
            finally:
                if suite.poll() is None:  # the tour failed: the suite is no use now
                    suite.terminate()
                    suite.wait(timeout=60)
            log = (tmp_path / "suite.log").read_text()
            assert code == 0, log[-4000:]
            settled(DEFAULT_BASE_PORT)  # and again once it is done, on a demo no longer starved of CPU
            run_tour(env)
        finally:
            stop_and_check_no_orphans(demo_b)
    finally:
        stop_and_check_no_orphans(demo_a)
