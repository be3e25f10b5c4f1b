"""Lint, types and layering are part of the test run: ruff, mypy --strict and import-linter contracts."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fleet import ROOT

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is a dev dependency; install with pip install -e '.[dev]'"
    return found


@pytest.mark.parametrize(
    "argv",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"], ["lint-imports"]],
    ids=["ruff", "ruff-format", "mypy", "import-linter"],
)
def test_tool_passes(argv: list[str]) -> None:
    res = subprocess.run([tool(argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_the_bench_scripts_pass_mypy_strict(tmp_path: Path) -> None:
    """The bench scripts (bench/proxy, bench/gateways, ...: Python without the .py, so outside the packages
    mypy checks above) are checked one by one, each a ``__main__`` beside bench/common.py."""
    scripts = sorted(p for p in (ROOT / "bench").iterdir() if p.is_file() and not p.suffix)
    assert len(scripts) >= 9, scripts
    env = {**os.environ, "MYPYPATH": str(ROOT / "bench")}
    for script in scripts:
        res = subprocess.run(
            [tool("mypy"), "--cache-dir", str(tmp_path), str(script)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_no_function_in_the_edge_or_the_control_plane_is_over_sixty_lines() -> None:
    """Functions of one screen: a longer one is split (its signature and docstring count)."""
    long = []
    for package in ("edge", "controlplane"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > 60:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_composition_roots_read_in_one_screen() -> None:
    """The edge's and the control plane's composition roots stay under 40 lines: a builder per concern."""
    for path, name in (("edge/server/app.py", "__init__"), ("controlplane/api.py", "create_app")):
        tree = ast.parse((ROOT / path).read_text())
        (node,) = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name == name and n.col_offset <= 4
        ]
        assert (node.end_lineno or 0) - node.lineno + 1 < 40, (path, name)


def test_the_wheel_ships_every_package(tmp_path: Path) -> None:
    """What the container installs (terraform/Dockerfile builds a wheel): every package and subpackage. Built
    from a clean copy of the sources (an in-tree build/ directory would hide a missing package)."""
    src = tmp_path / "src"
    junk = shutil.ignore_patterns(".venv", "build", "*.egg-info", ".*_cache", "__pycache__", ".git")
    shutil.copytree(ROOT, src, ignore=junk)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    shipped = {
        name.rsplit("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist() if name.endswith("__init__.py")
    }
    packages = {
        str(init.parent.relative_to(ROOT))
        for top in ("fleet", "controlplane", "edge", "regionsim", "meridian")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert packages <= shipped, sorted(packages - shipped)
