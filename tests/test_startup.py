"""Bad configuration stops start-up with a message naming the field and the file; no tracebacks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian.redisproc import free_port
from tests.fleet import ROOT

BAD_REGIONS = (ROOT / "regions.yaml").read_text().replace("capacity: 64", "capacity: -5", 1)


def run(args: list[str], env: dict[str, str], *, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    full["MERIDIAN_AUTH"] = "false"  # API keys have their own tests
    full.update(env)
    return subprocess.run(
        [sys.executable, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def bad_regions(tmp_path: Path) -> Path:
    p = tmp_path / "bad-regions.yaml"
    p.write_text(BAD_REGIONS)
    return p


@pytest.mark.parametrize("component", ["controlplane", "edge", "demo"])
def test_invalid_regions_yaml_stops_every_component(component: str, bad_regions: Path) -> None:
    if component == "controlplane":
        res = run(["-m", "controlplane"], {"MERIDIAN_REGIONS_FILE": str(bad_regions)})
    elif component == "edge":
        res = run(["-m", "edge"], {"MERIDIAN_REGIONS_FILE": str(bad_regions), "MERIDIAN_REGION": "us-east-1"})
    else:
        res = run(["-m", "meridian", "demo", "--config", str(bad_regions)], {})
    assert res.returncode == 2, res.stderr
    assert f"{bad_regions}:" in res.stderr and "regions[0].capacity" in res.stderr
    assert "greater than 0" in res.stderr
    assert "Traceback" not in res.stderr


def test_unparsable_regions_yaml(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("regions: [unclosed\n")
    res = run(["-m", "controlplane"], {"MERIDIAN_REGIONS_FILE": str(p)})
    assert res.returncode == 2 and "not valid YAML" in res.stderr and "Traceback" not in res.stderr
    assert f"{p}:" in res.stderr and "<unicode string>" not in res.stderr  # the file, not the parser's name


def test_a_duplicated_region_is_named(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    text = (ROOT / "regions.yaml").read_text()
    p.write_text(text.replace("  - name: us-west-2\n", "  - name: us-east-1\n", 1))
    res = run(["-m", "controlplane"], {"MERIDIAN_REGIONS_FILE": str(p)})
    assert res.returncode == 2 and "us-east-1 appear more than once" in res.stderr, res.stderr


def test_one_server_declared_twice_is_named_and_one_replica_is_enough(tmp_path: Path) -> None:
    """The same URL twice would count one server double in every balance and breaker: refused, naming it.
    A region of one replica is fine (its retries go to another region)."""
    text = (ROOT / "regions.yaml").read_text()
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        text.replace("http://vllm-b.eu-west-1.internal:8000", "http://vllm-a.eu-west-1.internal:8000")
    )
    res = run(["-m", "controlplane"], {"MERIDIAN_REGIONS_FILE": str(twice)})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "http://vllm-a.eu-west-1.internal:8000 appear more than once" in res.stderr
    from fleet.topology import load_topology

    one = tmp_path / "one.yaml"
    one.write_text(
        text.replace('      - {name: use1-b, url: "http://vllm-b.us-east-1.internal:8000"}\n', "", 1)
    )
    topo = load_topology(one)
    assert [r.name for r in topo.by_name["us-east-1"].replicas] == ["use1-a"]


def test_a_pool_over_replicas_serving_other_models_is_named(tmp_path: Path) -> None:
    """Scaling a pool down switches its replicas off: one that serves other models would take them too."""
    p = tmp_path / "r.yaml"
    text = (ROOT / "regions.yaml").read_text()
    p.write_text(
        text.replace(
            "serves: [llama-3.1-8b-instruct, support-bot-lora]",
            "serves: [llama-3.1-8b-instruct, qwen2.5-7b-instruct]",
            1,
        )
    )
    res = run(["-m", "controlplane"], {"MERIDIAN_REGIONS_FILE": str(p)})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "replica usw2-a of pool llama-3.1-8b-instruct also serves qwen2.5-7b-instruct" in res.stderr


def test_corrupt_mmdb_stops_the_edge(tmp_path: Path) -> None:
    db = tmp_path / "GeoLite2-City.mmdb"
    db.write_bytes(os.urandom(4096))
    res = run(["-m", "edge"], {"MERIDIAN_REGION": "us-east-1", "MERIDIAN_GEOIP_DB": str(db)})
    assert res.returncode == 2
    assert "GeoLite2-City.mmdb is not a valid .mmdb" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        (["-m", "edge"], {"MERIDIAN_REGION": "us-east-1", "MERIDIAN_PORT": "eighty"}, "MERIDIAN_PORT"),
        (
            ["-m", "edge"],
            {"MERIDIAN_REGION": "us-east-1", "MERIDIAN_TRUSTED_PROXIES": "10.0.0.0/33"},
            "MERIDIAN_TRUSTED_PROXIES",
        ),
        (["-m", "edge"], {}, "MERIDIAN_REGION"),
        (["-m", "edge"], {"MERIDIAN_REGION": "mars-1"}, "MERIDIAN_REGION"),
        (
            ["-m", "controlplane"],
            {"MERIDIAN_PROBE_INTERVAL_S": "0.1"},
            "MERIDIAN_PROBE_INTERVAL_S",
        ),
        (
            ["-m", "controlplane"],
            {"MERIDIAN_ADMIN_TOKENS": '[{"name": "a", "role": "god", "token": "0123456789abcdef"}]'},
            "MERIDIAN_ADMIN_TOKENS",
        ),
    ],
)
def test_invalid_settings_name_the_variable(args: list[str], env: dict[str, str], field: str) -> None:
    res = run(args, env)
    assert res.returncode == 2, res.stderr
    assert field in res.stderr and "Traceback" not in res.stderr


def test_an_edge_that_cannot_listen_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        unknown = "redis://nohost.invalid:6379/0"  # its lookups fail while the start fails
        res = run(
            ["-m", "edge"],
            {
                "MERIDIAN_REGION": "us-east-1",
                "MERIDIAN_HOST": "127.0.0.1",
                "MERIDIAN_PORT": str(port),
                "MERIDIAN_REDIS_URL": unknown,
                "MERIDIAN_REDIS_PRIMARY_URL": unknown,
            },
        )
    assert res.returncode == 2, res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "MERIDIAN_PORT" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # no "Future exception was never retrieved"


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (
            "edge",
            ["MERIDIAN_REGION", "MERIDIAN_REDIS_URL", "MERIDIAN_RTT_PROBE_INTERVAL_S", "MERIDIAN_TIMEOUTS"],
        ),
        ("controlplane", ["MERIDIAN_ADMIN_TOKENS", "MERIDIAN_REDIS_URL", "MERIDIAN_PROBE_INTERVAL_S"]),
    ],
)
def test_help_lists_every_setting(command: str, names: list[str]) -> None:
    res = run(["-m", "meridian", command, "--help"], {})
    assert res.returncode == 0, res.stderr
    for name in names:
        assert name in res.stdout, name


def test_meridian_sim_takes_the_readmes_form(tmp_path: Path) -> None:
    res = run(["-m", "meridian", "sim", "--help"], {})
    assert res.returncode == 0 and "--replica" in res.stdout, res.stderr
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meridian",
            "sim",
            "--region",
            "eu-west-1",
            "--replica",
            f"a=127.0.0.1:{port}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the simulator did not come up"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    ("module", "env", "names"),
    [
        ("edge", {"MERIDIAN_TIMEOUTS": "{bad"}, "MERIDIAN_TIMEOUTS"),
        ("edge", {"MERIDIAN_LOG_LEVEL": "bogus"}, "MERIDIAN_LOG_LEVEL"),
        ("edge", {"MERIDIAN_TRUSTED_PROXIES": "not-a-cidr"}, "trusted_proxies[0] (MERIDIAN_TRUSTED_PROXIES)"),
        ("controlplane", {"MERIDIAN_REDIS_URL": "http://x"}, "MERIDIAN_REDIS_URL"),
        ("controlplane", {"MERIDIAN_ADMIN_TOKENS": "[{bad"}, "MERIDIAN_ADMIN_TOKENS"),
    ],
    ids=["timeouts-json", "log-level", "trusted-proxies", "redis-url", "admin-tokens-json"],
)
def test_bad_settings_stop_start_up_with_a_short_message(
    module: str, env: dict[str, str], names: str
) -> None:
    env = {"MERIDIAN_REGION": "us-east-1", **env} if module == "edge" else env
    res = run(["-m", module], env)
    assert res.returncode == 2, res.stderr
    assert names in res.stderr and "Traceback" not in res.stderr and "lax-or-strict" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3, res.stderr


@pytest.mark.parametrize(
    ("module", "env"),
    [
        (
            "controlplane",
            {"MERIDIAN_ADMIN_TOKENS": '[{"name": "a", "role": "operator", "token": "short-tok"}]'},
        ),
        ("edge", {"MERIDIAN_REGION": "us-east-1", "MERIDIAN_KEY_SECRET": "short-sec"}),
    ],
    ids=["admin-token", "key-secret"],
)
def test_a_short_secret_is_measured_in_characters_and_never_echoed(module: str, env: dict[str, str]) -> None:
    res = run(["-m", module], env)
    assert res.returncode == 2, res.stderr
    assert "must be at least 16 characters long (this one has 9)" in res.stderr, res.stderr
    assert "short-" not in res.stderr and "items" not in res.stderr


@pytest.mark.parametrize("module", ["controlplane", "edge"])
def test_ctrl_c_while_starting_ends_quietly(module: str) -> None:
    """Ctrl-C during the imports (the first second): no traceback, the shell's status for an interrupt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env.update(MERIDIAN_REGION="us-east-1", MERIDIAN_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        # as a terminal's Ctrl-C finds it: a runner started in the background (`cmd &` in a script) hands
        # its children SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=_default_sigint,
    )

    def importing() -> bool:
        # the component's own process: until the exec, the forked child is a copy of this one (pydantic
        # loaded, SIGINT already at its default: a signal then kills it, status -2); read before the maps
        if b"-m\0" + module.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
            return False
        return "pydantic_core" in Path(f"/proc/{proc.pid}/maps").read_text()  # among its first imports

    deadline = time.monotonic() + 10
    while not importing():
        assert time.monotonic() < deadline, "the component never began its imports"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err  # interrupted, said the shell's way
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def logging_process(module: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``python -m module`` with its log on a pipe; terminated afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def read_until(proc: subprocess.Popen[str], *needles: str, timeout: float = 20) -> str:
    """The process's log up to the line where every needle has appeared (or the deadline)."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(n in "".join(seen) for n in needles):
        seen.append(proc.stderr.readline())
    return "".join(seen)


def test_an_edge_says_where_it_listens_and_that_its_store_is_unreachable() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env.update(
        MERIDIAN_REGION="us-east-1",
        MERIDIAN_HOST="127.0.0.1",
        MERIDIAN_PORT=str(port),
        MERIDIAN_REDIS_URL=f"redis://edge:s3cret@127.0.0.1:{free_port()}/0",
        MERIDIAN_TRUSTED_PROXIES="0.0.0.0/0",
        MERIDIAN_AUTH="false",
    )
    with logging_process("edge", env) as proc:
        text = read_until(proc, f"listening on 127.0.0.1:{port}", "cannot reach the state store")
        assert f"edge us-east-1 (pid {proc.pid}) listening on 127.0.0.1:{port}" in text, text
        assert "cannot reach the state store at redis://***@127.0.0.1" in text and "s3cret" not in text, text
        assert "MERIDIAN_TRUSTED_PROXIES includes 0.0.0.0/0" in text, text


def test_the_control_plane_says_where_it_listens_and_that_its_store_is_unreachable() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env.update(
        MERIDIAN_HOST="127.0.0.1",
        MERIDIAN_PORT=str(port),
        MERIDIAN_REDIS_URL=f"redis://controlplane:s3cret@127.0.0.1:{free_port()}/0",
        MERIDIAN_PROBE_ENABLED="false",
    )
    with logging_process("controlplane", env) as proc:
        text = read_until(proc, "cannot reach the state store")
        assert f"control plane (pid {proc.pid}) admin API on http://127.0.0.1:{port}" in text, text
        assert "4 regions from regions.yaml" in text, text
        assert "cannot reach the state store at redis://***@127.0.0.1" in text and "s3cret" not in text, text
