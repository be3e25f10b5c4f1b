"""`meridian demo` end to end: the ready line within 30 s, the README's guided tour as written, and no
process left behind after SIGTERM."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from controlplane.redisproc import free_block, port_free
from tests.fleet import ROOT

pytestmark = pytest.mark.slow


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tour:start -->\s*```sh\n(.*?)```\s*<!-- tour:end -->", text, re.S)
    assert block, "README has no guided tour block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def start_demo(base_port: int) -> tuple[subprocess.Popen[str], dict[str, object], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "demo", "--base-port", str(base_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    started = time.monotonic()
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=30):
        proc.kill()
        raise AssertionError("demo printed no ready line within 30 s")
    line = proc.stdout.readline()
    took = time.monotonic() - started
    return proc, json.loads(line), took


def stop_and_check_no_orphans(proc: subprocess.Popen[str]) -> None:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 10  # redis x5, sims x4, control plane, edges x4
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left behind: {alive}"


def test_demo_ready_line_tour_and_clean_stop() -> None:
    busy = [p for p in range(7100, 7130) if not port_free(p)]  # the tour is written for the default base port
    assert not busy, f"ports {busy} are busy; the guided tour needs the default ports 7100-7130"
    proc, ready, took = start_demo(7100)
    try:
        print(f"\ndemo ready in {took:.1f} s")
        assert took < 30
        assert ready["ready"] is True
        assert set(ready["edges"]) == {"us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1"}  # type: ignore[arg-type]
        assert ready["admin"] == {"url": "http://127.0.0.1:7100", "token": ready["admin"]["token"]}  # type: ignore[index]
        assert all(len(r["replicas"]) >= 2 for r in ready["regions"].values())  # type: ignore[attr-defined]
        assert set(ready["redis"]["replicas"]) == set(ready["edges"])  # type: ignore[index, arg-type]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for cmd in tour_commands():
            res = subprocess.run(
                ["bash", "-o", "pipefail", "-c", cmd],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 0, f"tour command failed: {cmd}\n{res.stdout}\n{res.stderr}"
    finally:
        if proc.poll() is None:
            stop_and_check_no_orphans(proc)


def test_demo_on_another_base_port_stops_cleanly_on_sigterm() -> None:
    base = free_block()
    proc, ready, _ = start_demo(base)
    try:
        assert ready["admin"]["url"] == f"http://127.0.0.1:{base}"  # type: ignore[index]
    finally:
        stop_and_check_no_orphans(proc)
