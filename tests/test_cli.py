"""meridian ctl: its options go anywhere on the line; the README's demo is picked when several run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meridian import cli


def test_ctl_options_are_taken_wherever_they_are_written() -> None:
    assert cli._hoist(["usage", "t-1", "--base-port", "21100"], ("--base-port", "--url")) == [
        "--base-port",
        "21100",
        "usage",
        "t-1",
    ]
    assert cli._hoist(["regions", "--url=http://x", "--json"], ("--base-port", "--url")) == [
        "--url=http://x",
        "regions",
        "--json",
    ]


def test_with_several_demos_the_one_on_the_default_base_port_is_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {}
    for port in (7100, 21100):
        f = tmp_path / f"{port}.json"
        f.write_text(json.dumps({"admin": {"url": f"http://127.0.0.1:{port}", "token": "t"}, "api_key": "k"}))
        files[port] = f
    monkeypatch.setattr("meridian.demo.running_demos", lambda: files)
    assert cli._demo_credentials(None)["url"] == "http://127.0.0.1:7100"
    del files[7100]
    files[23000] = files[21100]
    with pytest.raises(SystemExit, match="choose one with --base-port"):
        cli._demo_credentials(None)
