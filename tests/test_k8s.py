"""``meridian k8s``: the rendered KEDA ScaledObjects and Deployment patches match regions.yaml's pools (their
structure and every value that comes from the file)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fleet.topology import load_topology
from meridian import cli
from meridian.k8s import colliding, deployment_name, deployment_patch, render

ROOT = Path(__file__).resolve().parent.parent
CP = "http://meridian-controlplane.meridian.svc:8700"


def test_every_pool_gets_a_scaled_object_reading_its_desired_replicas() -> None:
    topo = load_topology(ROOT / "regions.yaml")
    pools = {(r.name, p.model): p for r in topo.regions for p in r.pools}
    assert pools, "regions.yaml declares pools"
    manifests = render(topo, controlplane_url=CP)
    seen = set()
    for region, docs in manifests.items():
        kinds = [d["kind"] for d in docs]
        assert kinds[0] == "TriggerAuthentication" and kinds.count("ScaledObject") == kinds.count(
            "Deployment"
        )
        auth = docs[0]["spec"]["secretTargetRef"][0]
        assert auth["parameter"] == "token" and auth["key"] == "pools-token"
        for so in (d for d in docs if d["kind"] == "ScaledObject"):
            spec = so["spec"]
            trigger = spec["triggers"][0]
            model = so["metadata"]["labels"]["meridian.dev/model"]
            pool = next(p for (r, m), p in pools.items() if r == region and m.replace(".", "-") == model)
            seen.add((region, pool.model))
            assert (
                spec["minReplicaCount"] == pool.min_replicas and spec["maxReplicaCount"] == pool.max_replicas
            )
            assert trigger["type"] == "metrics-api" and trigger["metricType"] == "AverageValue"
            meta = trigger["metadata"]
            assert (
                meta["url"] == f"{CP}/v1/pools/{region}/{pool.model}" and meta["valueLocation"] == "desired"
            )
            assert meta["targetValue"] == "1" and meta["authMode"] == "bearer"
            assert trigger["authenticationRef"]["name"] == docs[0]["metadata"]["name"]
            assert spec["scaleTargetRef"]["name"] == f"vllm-{model}"
            behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            policy = topo.autoscaling
            assert behavior["scaleDown"]["stabilizationWindowSeconds"] == policy.scale_down_stabilization_s
            assert behavior["scaleUp"]["policies"] == [
                {
                    "type": "Percent",
                    "value": policy.scale_up_percent,
                    "periodSeconds": policy.scale_up_period_s,
                },
                {
                    "type": "Pods",
                    "value": policy.scale_up_replicas,
                    "periodSeconds": policy.scale_up_period_s,
                },
            ]
            assert spec["pollingInterval"] == policy.interval_s
        for patch in (d for d in docs if d["kind"] == "Deployment"):
            assert "replicas" not in patch["spec"]  # the HPA owns it
            container = patch["spec"]["template"]["spec"]["containers"][0]
            assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert seen == set(pools)


def test_the_command_writes_one_file_per_region(tmp_path: Path) -> None:
    assert cli.main(["k8s", "--config", str(ROOT / "regions.yaml"), "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files and all(f.endswith(".yaml") for f in files)
    kinds = [{d["kind"] for d in yaml.safe_load_all((tmp_path / f).read_text())} for f in files]
    assert any({"TriggerAuthentication", "ScaledObject", "Deployment"} <= k for k in kinds)  # pools' regions


def test_names_are_unique_dns_labels_and_the_patch_keeps_the_containers_arguments() -> None:
    long = "org/" + "a-very-long-model-name" * 12
    models = ["llama-3.1-8b-instruct", "Llama-3.1-8B-Instruct", long, "qwen2.5-7b-instruct"]
    shared = colliding(models)
    assert shared == {"llama-3.1-8b-instruct", "Llama-3.1-8B-Instruct"}
    names = [deployment_name(m, tagged=m in shared) for m in models]
    assert len(set(names)) == 4 and names[3] == "vllm-qwen2-5-7b-instruct"  # no tag where none is needed
    assert all(len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names), names
    topo = load_topology(ROOT / "regions.yaml")
    region = next(r for r in topo.regions if r.pools)
    patch = deployment_patch(region, region.pools[0], "meridian")
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert "args" not in container  # a strategic merge would replace the whole list
    assert patch["metadata"]["annotations"]["meridian.dev/model"] == region.pools[0].model


CUSTOM = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication"}
NAME = "app.kubernetes.io/name"  # CRDs: not in Kubernetes' own schemas


def test_the_whole_fleet_renders_and_validates_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    """`meridian k8s` renders, per region, an edge (Deployment with readiness on /readyz, Service,
    PodDisruptionBudget, NetworkPolicy, ServiceMonitor) and the topology; the control plane in the home
    region only. Every built-in object validates strictly against Kubernetes 1.30's schema; Secrets are
    referenced, never rendered; every container is non-root on a read-only root filesystem."""
    assert cli.main(["k8s", "--out", str(tmp_path), "--home-region", "us-east-1", "--image", "m:1"]) == 0
    topo = load_topology(ROOT / "regions.yaml")
    for region in topo.names:
        docs = list(yaml.safe_load_all((tmp_path / f"{region}.yaml").read_text()))
        kinds = [d["kind"] for d in docs]
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"):
            assert kind in kinds, (region, kind)
        assert "Secret" not in kinds
        control = [
            d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "meridian-controlplane"
        ]
        assert bool(control) == (region == "us-east-1")
        for doc in docs:  # the fleet's own objects (a pool's Deployment patch is no whole object)
            if doc["kind"] not in CUSTOM and doc["metadata"].get("labels", {}).get(NAME) == "meridian":
                kubernetes_validate.validate(doc, "1.30", strict=True)
        edge = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "meridian-edge")
        (container,) = edge["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["MERIDIAN_REGION"]["value"] == region
        assert env["MERIDIAN_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "meridian-edge"
    with pytest.raises(SystemExit, match="--home-region 'mars-1' is not a region"):
        cli.main(["k8s", "--out", str(tmp_path), "--home-region", "mars-1"])
