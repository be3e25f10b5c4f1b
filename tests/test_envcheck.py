"""No silent settings: every MERIDIAN_* variable is one some component reads, else each component stops at
start-up with one line naming it (and the closest real setting)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.settings import ControlPlaneSettings
from edge.settings import EdgeSettings
from fleet.envcheck import SETTINGS, check, unknown

ROOT = Path(__file__).resolve().parent.parent


def test_the_list_is_every_settings_field_of_every_component() -> None:
    fields = {f"MERIDIAN_{n.upper()}" for m in (EdgeSettings, ControlPlaneSettings) for n in m.model_fields}
    assert fields == SETTINGS


def test_an_unknown_variable_is_named_with_the_closest_real_setting() -> None:
    assert check({"MERIDIAN_REGION": "x", "PATH": "/bin"}, {}) is None
    line = unknown(["MERIDIAN_CONNECT_TIMEOUT_S"], source="environment")
    assert line is not None and "MERIDIAN_CONNECT_TIMEOUT_S" in line and "MERIDIAN_TIMEOUTS" in line
    line = check({}, {"MERIDIAN_TENANT_POLL_S": "1"})
    assert line is not None and "(.env)" in line and "MERIDIAN_TENANTS_POLL_S" in line


@pytest.mark.parametrize("module", ["edge", "controlplane"])
def test_each_component_stops_with_one_line_on_an_unknown_variable(module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env["MERIDIAN_CONNECT_TIMEOUT_S"] = "1"
    env["PYTHONPATH"] = str(ROOT)  # this checkout, run from elsewhere (no .env of ours read)
    done = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MERIDIAN_CONNECT_TIMEOUT_S" in lines[0] and "MERIDIAN_TIMEOUTS" in lines[0], (
        lines
    )


def test_meridian_version_names_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    from meridian import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("meridian ") and out.split()[1][0].isdigit(), out
