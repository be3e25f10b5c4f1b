"""The admin API against its own OpenAPI schema: schemathesis (`--checks all`) on a live control plane."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.fleet import Fleet

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.mark.slow
async def test_schemathesis_finds_nothing_against_the_live_admin_api(fleet: Fleet, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        fleet.admin_url + "/schema/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "40",
        "--seed",
        "20261130",
        "--header",
        f"Authorization: Bearer {fleet.operator_token}",
        "--no-color",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested and selected[1] == selected[2] == tested[1], report[-2000:]
    # regions (3), drain, runs, audit, tenants (5), keys (3), usage (2), pools (3), store, session, events,
    # cancel, explain
    assert int(tested[1]) == 24


async def test_options_on_a_region_lists_patch(fleet: Fleet) -> None:
    headers = {"Authorization": f"Bearer {fleet.viewer_token}"}
    async with aiohttp.ClientSession() as s:
        async with s.options(fleet.admin_url + "/v1/regions/eu-west-1", headers=headers) as r:
            assert r.status == 204 and r.headers["Allow"] == "GET, OPTIONS, PATCH"
        async with s.options(fleet.admin_url + "/v1/regions", headers=headers) as r:
            assert r.status == 204 and r.headers["Allow"] == "GET, OPTIONS"


async def test_the_schema_documents_every_answer_and_the_patch_rule(fleet: Fleet) -> None:
    async with aiohttp.ClientSession() as s, s.get(fleet.admin_url + "/schema/openapi.json") as r:
        schema = await r.json()
    patch = schema["paths"]["/v1/regions/{name}"]["patch"]
    assert set(patch["responses"]) == {"200", "400", "401", "403", "404", "412", "422", "503"}
    tenant_patch = schema["components"]["schemas"]["TenantPatch"]
    assert len(tenant_patch["anyOf"]) == 6 and tenant_patch["additionalProperties"] is False
    body = schema["components"]["schemas"]["RegionPatch"]
    assert body["anyOf"] == [{"required": ["weight"]}, {"required": ["drained"]}]
    assert body["additionalProperties"] is False and body["required"] == ["reason"]
    get_one = schema["paths"]["/v1/regions/{name}"]["get"]["responses"]
    assert {"200", "401", "404", "409", "503"} <= set(get_one)
    assert "$ref" in str(get_one["200"]) and "ErrorBody" in str(get_one["404"])
    # answered by rules JSON Schema cannot say: a usage range over 31 days, a notice for an unknown replica
    assert "422" in schema["paths"]["/v1/tenants/{tenant_id}/usage"]["get"]["responses"]
    assert "422" in schema["paths"]["/v1/pools/{region}/{model}/interruptions"]["post"]["responses"]
