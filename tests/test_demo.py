"""`meridian demo` end to end: the ready line within 30 s, the README's guided tour as written, and no
process left behind after SIGTERM."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleet.state import Topology
from meridian.demo import PortPlan, state_file
from meridian.redisproc import free_block, port_free
from tests.fleet import ROOT

pytestmark = pytest.mark.slow


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tour:start -->\s*```sh\n(.*?)```\s*<!-- tour:end -->", text, re.S)
    assert block, "README has no guided tour block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def start_demo(base_port: int) -> tuple[subprocess.Popen[str], dict[str, Any], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meridian", "demo", "--base-port", str(base_port)],
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
        proc.terminate()  # the demo stops its children on SIGTERM; a kill would leave them behind
        proc.wait(timeout=20)
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


def on_base(cmd: str, base: int) -> str:
    """A tour command (written for the default base port 7100) aimed at the demo on ``base``: its ports
    moved by the same offset, ``meridian ctl`` told which demo. Nothing else changes: a demo the reader
    runs on 7100 is never touched by the tests."""
    cmd = re.sub(r"127\.0\.0\.1:71(\d\d)", lambda m: f"127.0.0.1:{base + int(m.group(1))}", cmd)
    return cmd.replace("meridian ctl ", f"meridian ctl --base-port {base} ")


def run_tour_command(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One tour command, as written. A ``sleep N && check`` (a reader waiting for something to spread)
    whose check fails is asked again until 10 x N seconds have passed: this demo shares the machine with
    the rest of the suite, and the README's waits are for a reader's idle machine (test_first_hour.py runs
    the tour word for word, no second asking)."""
    run = ["bash", "-o", "pipefail", "-c", cmd]
    res = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    waited = re.match(r"sleep (\d+(?:\.\d+)?) && (.*)", cmd)
    if res.returncode == 0 or waited is None:
        return res
    check = ["bash", "-o", "pipefail", "-c", waited.group(2)]
    deadline = time.monotonic() + 9 * float(waited.group(1))
    while res.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval of the check, not a wait for an outcome
        res = subprocess.run(check, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return res


def test_demo_ready_line_tour_and_clean_stop() -> None:
    base = free_block(60)  # never the default ports: a reader's demo may be running there
    proc, ready, took = start_demo(base)
    try:
        print(f"\ndemo ready in {took:.1f} s")
        assert took < 30
        assert ready["ready"] is True
        assert set(ready["edges"]) == {"us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1"}
        admin = ready["admin"]
        assert admin == {
            "url": f"http://127.0.0.1:{base}",
            "token": admin["token"],
            "viewer_token": admin["viewer_token"],
        }
        assert all(len(r["replicas"]) >= 2 for r in ready["regions"].values())
        assert set(ready["redis"]["replicas"]) == set(ready["edges"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for cmd in tour_commands():
            res = run_tour_command(on_base(cmd, base), env)
            assert res.returncode == 0, f"tour command failed: {cmd}\n{res.stdout}\n{res.stderr}"
        check_capacity(base, ready, env)
        check_console(base, ready, env)
        for url in ready["edges_internal"].values():
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
                text = r.read().decode()
            refused = [
                ln for ln in text.splitlines() if ln.startswith("meridian_edge_snapshots_refused_total{")
            ]
            assert all(ln.endswith(" 0.0") for ln in refused), refused  # a fresh fleet refuses no snapshot
    finally:
        if proc.poll() is None:
            stop_and_check_no_orphans(proc)


def check_console(base: int, ready: dict[str, Any], env: dict[str, str]) -> None:
    """The README's console paragraph: the page is served at the admin URL, and `meridian ctl token` prints
    the operator's token and `--viewer` the viewer's, which sign in as those roles."""
    with urllib.request.urlopen(f"http://127.0.0.1:{base}/console", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    for flag, role in (([], "operator"), (["--viewer"], "viewer")):
        argv = [sys.executable, "-m", "meridian", "ctl", "--base-port", str(base), "token", *flag]
        res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        request = urllib.request.Request(
            f"http://127.0.0.1:{base}/v1/session", headers={"Authorization": f"Bearer {res.stdout.strip()}"}
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.load(r)["role"] == role


def check_capacity(base: int, ready: dict[str, Any], env: dict[str, str]) -> None:
    """`meridian capacity --demo` reads the demo's own history with its credentials; the ready line's Redis
    URL, which carries none, is refused in one line pointing at --demo (not a traceback)."""

    def capacity(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "meridian", "capacity", *args]
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    with tempfile.TemporaryDirectory() as out:
        res = capacity("--demo", "--base-port", str(base), "--days", "0.01", "--out", out)
        # the tour's traffic: a report, or (no pool had traffic in it) the one line that says so
        assert res.returncode == 0 or "has traffic in the traffic recorded" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr, res.stderr
    res = capacity("--redis", ready["redis"]["primary"], "--out", out)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--demo" in res.stderr, res.stderr


def run_demo_expecting_refusal(base: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    return subprocess.run(
        [sys.executable, "-m", "meridian", "demo", "--base-port", str(base)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_demo_on_another_base_port_stops_cleanly_on_sigterm() -> None:
    """A second demo on the same base port is refused before it starts anything; the first is untouched."""
    base = free_block()
    proc, ready, _ = start_demo(base)
    try:
        assert ready["admin"]["url"] == f"http://127.0.0.1:{base}"
        before = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        second = run_demo_expecting_refusal(base)
        assert second.returncode == 2, second.stderr
        assert f"another demo is running on --base-port {base}" in second.stderr
        assert "Traceback" not in second.stderr
        after = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert after == before  # nothing of the first demo was stopped or replaced
        for url in [ready["admin"]["url"], *ready["edges"].values()]:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                assert resp.status == 200
        assert state_file(base).exists()  # the refused demo removed nothing of the running one's
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        ctl = subprocess.run(
            [sys.executable, "-m", "meridian", "ctl", "--base-port", str(base), "regions", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ctl.returncode == 0, ctl.stderr
        assert f"the demo at http://127.0.0.1:{base}" in ctl.stderr and '"regions"' in ctl.stdout
    finally:
        stop_and_check_no_orphans(proc)


def test_demo_refuses_a_base_port_whose_ports_are_taken() -> None:
    base = free_block()
    with socket.socket() as taken:
        # as the demo's servers bind: a port left in TIME_WAIT by an earlier test is still free to take
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", base + 10))
        taken.listen()
        res = run_demo_expecting_refusal(base)
    assert res.returncode == 2, res.stderr
    assert f"port {base + 10} (Redis primary) is in use" in res.stderr
    assert "--base-port" in res.stderr and "Traceback" not in res.stderr
    assert all(port_free(p) for p in range(base, base + 40) if p != base + 10)  # nothing was started


def test_the_port_plan_never_overlaps_itself() -> None:
    for n in (1, 4, 9, 10, 12):
        topo = Topology.model_validate(
            {
                "regions": [
                    {
                        "name": f"r{i}",
                        "location": {"lat": 0, "lon": i},
                        "capacity": 1,
                        "replicas": [
                            {"name": f"r{i}a", "url": f"http://r{i}a.test"},
                            {"name": f"r{i}b", "url": f"http://r{i}b.test"},
                        ],
                    }
                    for i in range(n)
                ]
            }
        )
        plan = PortPlan.of(topo, 7100)
        assert len(plan.described()) == 1 + n + 1 + n + 2 * n + n, n  # admin, edges, Redis, sims, internal
        if n == 4:  # the documented plan the guided tour uses
            assert (plan.edges["r0"], plan.primary, plan.replicas["r0"], plan.sims[("r0", "r0a")]) == (
                7101,
                7110,
                7111,
                7120,
            )


def test_meridian_up_fronts_the_servers_a_regions_file_names(tmp_path: Path) -> None:
    """``meridian up``: the demo without simulators — control plane, Redis and edges in front of the
    replicas the file names, here one plain OpenAI-compatible server (``engine: openai``: no /health, no
    /metrics needed), one replica in one region; the same ready line; a chat through the edge is served."""
    base = free_block()
    server_port = base + 39  # inside the block, away from the fleet's own ports
    server = subprocess.Popen(
        [sys.executable, "-m", "regionsim", "--region", "home", "--replica", f"mine=127.0.0.1:{server_port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    regions = tmp_path / "mine.yaml"
    regions.write_text(
        "models: {sim-llm: {context_length: 8192}}\n"
        "regions:\n"
        "  - name: home\n"
        "    location: {lat: 51.5, lon: -0.1}\n"
        "    capacity: 8\n"
        "    engine: openai\n"
        f'    replicas: [{{name: mine, url: "http://127.0.0.1:{server_port}"}}]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meridian", "up", "--regions-file", str(regions), "--base-port", str(base)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=30), "meridian up printed no ready line within 30 s"
        ready = json.loads(proc.stdout.readline())
        assert ready["regions"] == {"home": {"replicas": [f"http://127.0.0.1:{server_port}"]}}
        body = json.dumps(
            {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        )
        req = urllib.request.Request(
            ready["edges"]["home"] + "/v1/chat/completions",
            data=body.encode(),
            headers={"Authorization": f"Bearer {ready['api_key']}", "Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 20
        while True:  # the edge routes once its first snapshot is in
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    assert resp.status == 200 and resp.headers["X-Meridian-Replica"] == "mine"
                    break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503 and time.monotonic() < deadline, exc.read()
                time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # redis x2, control plane, edge
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        server.terminate()
        server.wait(timeout=10)
