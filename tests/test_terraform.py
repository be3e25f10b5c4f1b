"""Terraform structure, checked by parsing every .tf with python-hcl2 (providers cannot be downloaded here,
so no `terraform validate`): for_each over regions.yaml, health checks on the edge's readiness endpoint,
no secrets in variables, typed and documented variables."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from edge.settings import DEFAULT_PORT, READINESS_PATH, EdgeSettings
from tests.fleet import ROOT

TF = ROOT / "terraform"


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return dict(hcl2.load(f))


def uq(key: str) -> str:
    return key.strip('"')


def blocks(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in doc.get(kind, []):
        out.update({uq(k): v for k, v in item.items()})
    return out


def resources(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in doc.get("resource", []):
        for rtype, named in item.items():
            for name, body in named.items():
                out[f"{uq(rtype)}.{uq(name)}"] = body
    return out


def module_doc(name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in sorted((TF / "modules" / name).glob("*.tf")):
        for k, v in load(f).items():
            merged.setdefault(k, []).extend(v)
    return merged


def strip(v: object) -> str:
    return str(v).strip().strip('"').removeprefix("${").removesuffix("}")


def test_every_tf_file_parses_and_layout_is_standard() -> None:
    files = sorted(TF.rglob("*.tf"))
    assert len(files) >= 12
    for f in files:
        load(f)
    for name in ("versions.tf", "variables.tf", "main.tf", "outputs.tf"):
        assert (TF / name).exists()
    for mod in ("region", "global", "control_plane"):
        for name in ("versions.tf", "variables.tf", "main.tf", "outputs.tf"):
            assert (TF / "modules" / mod / name).exists()
    assert list((TF / "examples").rglob("main.tf"))
    versions = load(TF / "versions.tf")
    aws = versions["terraform"][0]["required_providers"][0]["aws"]
    assert ">= 6" in strip(aws["version"])


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform binary not installed")
def test_terraform_fmt_check() -> None:
    res = subprocess.run(["terraform", "fmt", "-check", "-recursive"], cwd=TF, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_root_reads_regions_yaml_and_loops_the_region_module() -> None:
    main = load(TF / "main.tf")
    local = blocks(main, "locals")
    assert "yamldecode(file(var.regions_file))" in strip(local["topology"])
    assert strip(local["regions"]).replace(" ", "") == "{forrinlocal.topology.regions:r.name=>r}"
    modules = blocks(main, "module")
    # every region is one of the region module's: the home region and the hubs, or a follower of them
    assert "local.store_regions" in strip(modules["region"]["for_each"])
    assert "local.follower_regions" in strip(modules["follower"]["for_each"])
    for name in ("region", "follower"):
        assert strip(modules[name]["source"]) == "./modules/region"
    assert "local.regions" in strip(local["others"]) and "local.others" in strip(local["follower_regions"])
    variables = blocks(load(TF / "variables.tf"), "variable")
    assert strip(variables["regions_file"]["default"]) == "../regions.yaml"
    assert (TF / strip(variables["regions_file"]["default"])).resolve() == (ROOT / "regions.yaml").resolve()
    endpoints = strip(modules["global"]["endpoints"])
    assert "merge(module.region, module.follower)" in endpoints  # DNS records for every region


def region_keys(regions_yaml: Path) -> set[str]:
    """What `{ for r in local.topology.regions : r.name => r }` yields for this file."""
    topology = yaml.safe_load(regions_yaml.read_text())
    return {r["name"] for r in topology["regions"]}


def test_adding_a_region_to_regions_yaml_is_picked_up_without_touching_terraform(tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in TF.rglob("*.tf")}
    data = yaml.safe_load((ROOT / "regions.yaml").read_text())
    data["regions"].append(
        {
            "name": "sa-east-1",
            "location": {"lat": -23.5, "lon": -46.6},
            "failure_domain": "sa-east",
            "capacity": 32,
            "weight": 100,
            "replicas": [
                {"name": "sae1-a", "url": "http://a:8000"},
                {"name": "sae1-b", "url": "http://b:8000"},
            ],
        }
    )
    copy = tmp_path / "regions.yaml"
    copy.write_text(yaml.safe_dump(data))
    assert region_keys(copy) == region_keys(ROOT / "regions.yaml") | {"sa-east-1"}
    assert {p: p.read_bytes() for p in TF.rglob("*.tf")} == before
    from fleet.topology import load_topology

    assert "sa-east-1" in load_topology(copy).names  # and the same file is valid for edges/control plane


def test_region_module_has_edge_replica_autoscaling_and_health_check_on_readyz() -> None:
    res = resources(module_doc("region"))
    for needed in (
        "aws_ecs_service.edge",
        "aws_lb.edge",
        "aws_lb_target_group.edge",
        "aws_lb_listener.edge",
        "aws_appautoscaling_target.edge",
        "aws_appautoscaling_policy.edge_cpu",
        "aws_security_group.edge",
        "aws_elasticache_replication_group.replica",
    ):
        assert needed in res, needed
    replica = res["aws_elasticache_replication_group.replica"]
    assert strip(replica["global_replication_group_id"]) == "var.global_replication_group_id"
    hc = res["aws_lb_target_group.edge"]["health_check"][0]
    assert strip(hc["path"]) == "var.readiness_path"
    root_vars = blocks(load(TF / "variables.tf"), "variable")
    assert strip(root_vars["readiness_path"]["default"]) == READINESS_PATH == "/readyz"
    assert root_vars["edge_port"]["default"] == DEFAULT_PORT == EdgeSettings.model_fields["port"].default


def test_global_module_has_health_checked_latency_records_per_region() -> None:
    res = resources(module_doc("global"))
    hc = res["aws_route53_health_check.edge"]
    assert strip(hc["for_each"]) == "var.endpoints"
    assert strip(hc["resource_path"]) == "var.readiness_path" and strip(hc["port"]) == "var.edge_port"
    latency = res["aws_route53_record.latency"]
    assert strip(latency["for_each"]) == "var.endpoints"
    assert "latency_routing_policy" in latency and "health_check_id" in latency
    assert latency["alias"][0]["evaluate_target_health"] is True
    assert (
        strip(res["aws_route53_record.origin_secondary"]["failover_routing_policy"][0]["type"]) == "SECONDARY"
    )
    main = blocks(load(TF / "main.tf"), "module")["global"]
    assert (
        strip(main["readiness_path"]) == "var.readiness_path" and strip(main["edge_port"]) == "var.edge_port"
    )


def all_variables() -> list[tuple[Path, str, dict[str, Any]]]:
    out = []
    for f in TF.rglob("variables.tf"):
        for name, body in blocks(load(f), "variable").items():
            out.append((f, name, body))
    return out


def test_every_variable_is_typed_and_documented() -> None:
    variables = all_variables()
    assert len(variables) > 20
    for f, name, body in variables:
        assert "type" in body, f"{f}: variable {name} has no type"
        assert body.get("description"), f"{f}: variable {name} has no description"
    validated = [name for _, name, body in variables if "validation" in body]
    assert len(validated) >= 5


def test_no_secret_is_a_plain_variable() -> None:
    for f, name, _body in all_variables():
        lowered = name.lower()
        assert not any(w in lowered for w in ("password", "token_value")), f"{f}: {name}"
        if "token" in lowered or "secret" in lowered:
            assert lowered.endswith(("_secret_name", "_secret_arn")), f"{f}: {name} looks like a secret value"
    cp = resources(module_doc("control_plane"))
    task = strip(cp["aws_ecs_task_definition.control_plane"]["container_definitions"])
    assert "MERIDIAN_ADMIN_TOKENS" in task and "valueFrom" in task  # injected by ECS from Secrets Manager
    assert "data.aws_secretsmanager_secret.admin_tokens.arn" in task
    for f in TF.rglob("*.tf"):  # an ephemeral read feeding write-only arguments never reaches the state
        assert 'data "aws_secretsmanager_secret_version"' not in f.read_text(), (
            f"{f} would read the secret into state"
        )
        assert not re.search(r"^\s*passwords\s*=", f.read_text(), re.M), f"{f}: a password in state"


def test_dockerfile_is_multistage_and_non_root() -> None:
    text = (TF / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2 and "AS build" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text


def test_the_store_runs_with_the_fleets_acl_users_tls_and_narrow_security_groups() -> None:
    from fleet.acl import RULES, SENTINEL, edge_rule, edge_user

    users = module_doc("redis_users")
    rules = {uq(k): strip(v) for k, v in blocks(users, "locals")["rules"].items()}
    # the same users and rules as the demo and tests run with (fleet/acl.py); ElastiCache runs no Sentinel
    assert rules == {user: rule for user, rule in RULES.items() if user != SENTINEL}
    # and one user per edge, each writing in its own name only (the same rule, ${e} the edge's name)
    text = (TF / "modules" / "redis_users" / "main.tf").read_text()
    per_edge = re.findall(r'for e in var\.edges : "([^"]+)" => "([^"]+)"', text)
    assert per_edge == [(edge_user("${e}"), edge_rule("${e}"))]
    assert "aws_elasticache_user.edge" in text
    region = (TF / "modules" / "region" / "main.tf").read_text()
    assert 'MERIDIAN_REDIS_USERNAME = "meridian-edge-${var.region}"' in region
    assert ':meridian-edge-${var.region}::"' in region  # its own password from the secret
    res = resources(users)
    assert strip(res["aws_elasticache_user.default_off"]["access_string"]).startswith("off")
    for name in ("control_plane", "region"):
        doc = module_doc(name)
        groups = [r for k, r in resources(doc).items() if k.startswith("aws_elasticache_replication_group.")]
        for g in groups:
            assert strip(g["user_group_ids"][0]) == "module.redis_users.user_group_id"
            assert g["transit_encryption_enabled"] is True
        for key, sg in resources(doc).items():
            if not key.startswith("aws_security_group."):
                continue
            for rule in sg.get("ingress", []):
                assert (rule["from_port"], rule["to_port"]) != (0, 65535), f"{name}: {key} opens every port"
                if "redis" in key:
                    assert rule["from_port"] == rule["to_port"] == 6379
        text = "\n".join(p.read_text() for p in (TF / "modules" / name).glob("*.tf"))
        assert "MERIDIAN_REDIS_PASSWORD" in text and "valueFrom" in text  # injected, never a plain value


def test_the_api_key_secret_reaches_the_control_plane_and_every_edge_from_secrets_manager() -> None:
    for module, task_name in (("control_plane", "control_plane"), ("region", "edge")):
        res = resources(module_doc(module))
        task = strip(res[f"aws_ecs_task_definition.{task_name}"]["container_definitions"])
        assert "MERIDIAN_KEY_SECRET" in task and "data.aws_secretsmanager_secret.api_key_secret.arn" in task
        policies = " ".join(
            strip(r.get("policy", "")) for k, r in res.items() if k.startswith("aws_iam_role_policy")
        )
        assert "data.aws_secretsmanager_secret.api_key_secret.arn" in policies, module  # the role may read it


def test_the_admin_api_is_tls_only_and_edges_keep_metrics_off_the_client_port() -> None:
    cp = resources(module_doc("control_plane"))
    listeners = [r for k, r in cp.items() if k.startswith("aws_lb_listener.")]
    assert listeners and all(strip(r["protocol"]) == "TLS" for r in listeners)  # no plain-text listener
    assert all(strip(r["certificate_arn"]) == "var.admin_certificate_arn" for r in listeners)
    region = module_doc("region")
    env = str(region["locals"])
    assert "MERIDIAN_INTERNAL_PORT" in env and "var.internal_port" in env
    sg = resources(region)["aws_security_group.edge"]
    internal = [i for i in sg["ingress"] if "var.internal_port" in str(i["from_port"])]
    assert internal and all("0.0.0.0/0" not in str(i["cidr_blocks"]) for i in internal)


CHECKOV = "3.3.30"  # pinned: a new release's new checks are a change to review, not a surprise in CI
SKIP = re.compile(r"#\s*checkov:skip=(CKV2?_[A-Z0-9_]+)(?::(.*))?")


def checkov_bin() -> Path:
    """checkov in a virtual environment of its own, made once per machine: its pins clash with the
    project's (its bc-python-hcl2 installs the same ``hcl2`` module as python-hcl2). A lock keeps two test
    workers from making it at once."""
    home = Path.home() / ".cache" / "meridian" / f"checkov-{CHECKOV}"
    exe = home / "bin" / "checkov"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f"checkov-{CHECKOV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not exe.exists():
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
            pip = [str(home / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, f"checkov=={CHECKOV}"], check=True, timeout=900)
    return exe


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run on a machine installs checkov into its own venv
def test_the_terraform_passes_checkov_and_every_skip_says_why() -> None:
    """The IaC scan: no failed check; a check that does not apply is skipped inline, with its reason."""
    done = subprocess.run(
        [str(checkov_bin()), "-d", str(TF), "--framework", "terraform", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    skips = [m for f in TF.rglob("*.tf") for m in SKIP.finditer(f.read_text())]
    assert all(m.group(2) and len(m.group(2).strip()) > 10 for m in skips), [m.group(0) for m in skips]


def test_the_store_layout_fits_the_global_datastore_for_any_number_of_regions() -> None:
    """At most two hubs (ElastiCache Global Datastore's limit), refused with a message naming it; a region
    beyond them follows the nearest hub and reads its replica (the hub admits its followers' CIDRs)."""
    variables = blocks(load(TF / "variables.tf"), "variable")
    (rule,) = variables["store_hubs"]["validation"]
    assert strip(rule["condition"]) == "length(var.store_hubs) <= 2"
    assert "at most two other regions" in strip(rule["error_message"])
    main = load(TF / "main.tf")
    layout = resources(main)["terraform_data.store_layout"]["lifecycle"][0]["precondition"]
    assert any("store_hubs must name regions" in strip(p["error_message"]) for p in layout)
    follower = blocks(main, "module")["follower"]
    assert strip(follower["store_role"]) == "follower"
    assert "local.follows[each.key]" in strip(follower["follow_endpoint"])
    region = blocks(main, "module")["region"]
    assert "local.follows" in strip(region["reader_cidrs"])
    replica = resources(module_doc("region"))["aws_elasticache_replication_group.replica"]
    assert strip(replica["count"]) == "local.hub ? 1 : 0"
