"""The documentation holds: the reference pages are what the code generates (every setting and every
regions.yaml field, the admin API's operations), the README stays a front door, and the site builds with
MkDocs in strict mode (a broken link fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.envcheck import SETTINGS
from meridian import reference

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.parametrize("page", reference.PAGES)
def test_each_reference_page_is_what_the_code_generates(page: str) -> None:
    assert (DOCS / "reference" / page).read_text() == reference.pages()[page], (
        f"docs/reference/{page} is stale: run `python -m meridian.reference`"
    )


def test_every_setting_of_every_component_is_on_the_configuration_page() -> None:
    page = (DOCS / "reference" / "configuration.md").read_text()
    listed = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `MERIDIAN_")}
    assert listed == set(SETTINGS)
    described = [line for line in page.splitlines() if line.startswith("| `MERIDIAN_")]
    assert all(not line.rstrip().endswith("|  |") for line in described)  # each with what it sets


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220
    linked = {part.split(")")[0] for line in lines for part in line.split("](docs/")[1:]}
    assert all((DOCS / target.split("#")[0]).is_file() for target in linked), linked


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").is_file()
