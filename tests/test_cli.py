"""meridian ctl: its options go anywhere on the line; the README's demo is picked when several run."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meridian import cli
from tests.fleet import Fleet, ServerFactory, start_fleet


def test_ctl_options_are_taken_wherever_they_are_written() -> None:
    options = {"--base-port": True, "--url": True, "--json": False}
    assert cli._hoist(["usage", "t-1", "--base-port", "21100"], options) == [
        "--base-port",
        "21100",
        "usage",
        "t-1",
    ]
    assert cli._hoist(["regions", "--url=http://x", "--json"], options) == [
        "--url=http://x",
        "--json",
        "regions",
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


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, auth=True, regions=("eu-west-1",))
    try:
        yield f
    finally:
        await f.close()


async def test_ctl_speaks_in_short_lines_json_on_request_and_errors_in_one_line_on_stderr(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MERIDIAN_ADMIN_URL", fleet.admin_url)
    monkeypatch.setenv("MERIDIAN_TOKEN", fleet.operator_token)

    async def ctl(*words: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["ctl", *words])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await ctl("set-weight", "eu-west-1", "40", "--reason", "test")
    assert code == 0 and out.strip().startswith("eu-west-1: weight 100 -> 40, drained false -> false")
    code, out, _ = await ctl("audit", "--limit", "1")
    assert code == 0 and len(out.strip().splitlines()) == 2 and "test" in out.splitlines()[1], out
    code, out, _ = await ctl("set-weight", "eu-west-1", "100", "--reason", "test", "--json")
    assert code == 0 and json.loads(out)["after"]["weight"] == 100  # --json after the verb works too
    code, out, err = await ctl("set-weight", "nowhere", "1", "--reason", "test")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "HTTP 404" in err, err
    tenant, _ = await fleet.tenant_key(name="voice")
    code, out, _ = await ctl("key-issue", "Voice")  # by its name (any case) as well as its id
    key_id = out.split("(key ")[1].split()[0]
    code, out, err = await ctl("key-issue", "voice", "--expires-in", "90d")
    assert code == 0 and "(key " in out, err
    code, out, _ = await ctl("keys", "voice")
    lines = out.strip().splitlines()
    assert code == 0 and sum("never expires" not in line for line in lines) == 1, out  # the new one
    expiring = next(line for line in lines if "never" not in line)
    assert f"expires {(datetime.now(UTC) + timedelta(days=90)):%Y-%m-%d}" in expiring, expiring
    with pytest.raises(SystemExit, match="--expires-in 'soon': a number and one of s, m, h, d"):
        await ctl("key-issue", "voice", "--expires-in", "soon")  # the program's one line on stderr
    code, out, _ = await ctl("key-revoke", tenant, key_id)
    assert code == 0 and out.strip() == f"revoked key {key_id} of tenant {tenant}"
    code, out, _ = await ctl("tenant-delete", tenant)
    assert code == 0 and out.strip() == f"deleted tenant {tenant} and its keys"


def verbs(tenant: str) -> list[list[str]]:
    """Every ctl verb that talks to the admin API, with arguments that work (``{key}``: filled in later)."""
    return [
        ["regions"],
        ["pools"],
        ["store"],
        ["audit", "--limit", "3"],
        ["set-weight", "eu-west-1", "90", "--reason", "every verb"],
        ["drain", "eu-west-1", "--reason", "every verb"],
        ["undrain", "eu-west-1", "--reason", "every verb"],
        ["tenants"],
        ["tenant-set", tenant, "--rpm", "120", "--reason", "every verb"],
        ["keys", tenant],
        ["key-issue", tenant, "--expires-in", "1d"],
        ["key-revoke", tenant, "{key}"],
        ["usage", tenant],
        ["usage", "--top", "3"],
        ["tenant-create", "{name}", "--rpm", "60"],
        ["tenant-delete", "{name}"],
    ]


async def test_every_verb_speaks_a_short_human_answer_or_json_on_request(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each verb, plain: not JSON, no line over 100 columns; with --json: JSON. A bad argument to each verb
    that names something: one line on stderr and a non-zero status."""
    monkeypatch.setenv("MERIDIAN_ADMIN_URL", fleet.admin_url)
    monkeypatch.setenv("MERIDIAN_TOKEN", fleet.operator_token)

    def ctl(*words: str) -> tuple[int, str, str]:
        try:
            code = cli.main(["ctl", *words])
        except SystemExit as exc:  # what the program prints on stderr before it exits with status 1
            code = 1
            print(exc.code, file=sys.stderr)
        out, err = capsys.readouterr()
        return code, out, err

    tenant, _ = await fleet.tenant_key(name="every-verb")
    for json_too in (False, True):
        for words in verbs(tenant):
            if "{key}" in words:  # a key to revoke: issue one first
                _, out, _ = await asyncio.to_thread(ctl, "key-issue", tenant, "--json")
                words = [json.loads(out)["id"] if w == "{key}" else w for w in words]
            words = [f"made-{json_too}" if w == "{name}" else w for w in words]
            flags = ["--json"] if json_too else []
            code, out, err = await asyncio.to_thread(ctl, *words, *flags)
            assert code == 0, (words, err)
            if json_too:
                json.loads(out)
            else:
                with pytest.raises(ValueError):
                    json.loads(out)
                assert all(len(line) <= 100 for line in out.splitlines()), (words, out)
    for words in (["set-weight", "mars-1", "5", "--reason", "x"], ["keys", "nobody"], ["usage", "nobody"]):
        code, out, err = await asyncio.to_thread(ctl, *words)
        assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, (words, err)
