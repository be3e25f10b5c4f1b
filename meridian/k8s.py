"""``meridian k8s``: Kubernetes manifests for regions.yaml's pools (no I/O but the output). Per pool, a KEDA
``ScaledObject`` whose metrics-api trigger reads the pool's desired replicas from the control plane
(``GET /v1/pools/{region}/{model}``, field ``desired``; target value 1, so the HPA runs exactly that many),
with the pool's bounds and HPA behaviour; per region, the ``TriggerAuthentication`` carrying the admin token
KEDA reads with (a token of the ``pools`` role, from a Secret); and per pool the patch of its vLLM
Deployment (replicas left to the HPA, a preStop drain and a readiness probe, the capacity-type node
selector of its on-demand baseline). Names are DNS-1123 labels, one per model."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fleet.pools import Autoscaling, PoolSpec
from fleet.state import Region, Topology

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def path_segment(text: str) -> str:
    """``text`` as one URL path segment: RFC 3986's unreserved characters kept, every other byte %XX."""
    return "".join(chr(b) if b in UNRESERVED else f"%{b:02X}" for b in text.encode())


NAME_MAX = 63  # a DNS-1123 label (and a label value): what a Deployment's pods and KEDA's HPA names build on


def slug(text: str, *, limit: int = NAME_MAX, tagged: bool = False) -> str:
    """A Kubernetes name for ``text``: lowercase alphanumerics and dashes, at most ``limit`` characters; when
    shortened (or ``tagged``: another text gives the same name) 8 hex characters of the text's SHA-256 end
    it, so two texts never share one."""
    plain = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
    if len(plain) <= limit and not tagged:
        return plain
    tag = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{plain[: limit - 9].rstrip('-')}-{tag}"


MODEL_MAX = NAME_MAX - len("vllm-") - len("-") - 14  # the ScaledObject adds the region (14 at most)


def deployment_name(model: str, *, tagged: bool = False) -> str:
    return f"vllm-{slug(model, limit=MODEL_MAX, tagged=tagged)}"


def colliding(models: list[str]) -> set[str]:
    """The models whose plain names another model shares (``Llama-3.1`` and ``llama-3.1``)."""
    seen: dict[str, list[str]] = {}
    for m in models:
        seen.setdefault(slug(m, limit=MODEL_MAX), []).append(m)
    return {m for group in seen.values() if len(group) > 1 for m in group}


def scaled_object(
    region: Region,
    pool: PoolSpec,
    policy: Autoscaling,
    *,
    controlplane_url: str,
    namespace: str,
    tagged: bool = False,
) -> dict[str, Any]:
    url = f"{controlplane_url.rstrip('/')}/v1/pools/{region.name}/{path_segment(pool.model)}"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {
            "name": f"{deployment_name(pool.model, tagged=tagged)}-{slug(region.name, limit=14)}",
            "namespace": namespace,
            "labels": {
                "meridian.dev/region": region.name,
                "meridian.dev/model": slug(pool.model, tagged=tagged),
            },
        },
        "spec": {
            "scaleTargetRef": {"name": deployment_name(pool.model, tagged=tagged)},
            "minReplicaCount": pool.min_replicas,
            "maxReplicaCount": pool.max_replicas,
            "pollingInterval": max(1, round(policy.interval_s)),
            "cooldownPeriod": max(1, round(policy.scale_down_stabilization_s)),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(policy)}},
            "triggers": [
                {
                    "type": "metrics-api",
                    "metricType": "AverageValue",
                    "metadata": {
                        "url": url,
                        "format": "json",
                        "valueLocation": "desired",
                        "targetValue": "1",
                        "activationTargetValue": "0",
                        "authMode": "bearer",
                    },
                    "authenticationRef": {"name": "meridian-controlplane"},
                }
            ],
        },
    }


def behavior(policy: Autoscaling) -> dict[str, Any]:
    """HPA v2 behaviour from regions.yaml's autoscaling block (the control plane's own decisions use the
    same numbers; the HPA's keep a Kubernetes-side guard on them)."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": round(policy.scale_up_stabilization_s),
            "selectPolicy": "Max",
            "policies": [
                {
                    "type": "Percent",
                    "value": round(policy.scale_up_percent),
                    "periodSeconds": round(policy.scale_up_period_s),
                },
                {
                    "type": "Pods",
                    "value": policy.scale_up_replicas,
                    "periodSeconds": round(policy.scale_up_period_s),
                },
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": round(policy.scale_down_stabilization_s),
            "selectPolicy": "Min",
            "policies": [
                {
                    "type": "Percent",
                    "value": round(policy.scale_down_percent),
                    "periodSeconds": round(policy.scale_down_period_s),
                }
            ],
        },
    }


def trigger_auth(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "meridian-controlplane", "namespace": namespace},
        "spec": {"secretTargetRef": [{"parameter": "token", "name": "meridian-keda", "key": "pools-token"}]},
    }


def deployment_patch(
    region: Region, pool: PoolSpec, namespace: str, *, tagged: bool = False
) -> dict[str, Any]:
    """The strategic-merge patch for the pool's vLLM Deployment: the HPA owns ``replicas`` (so the patch
    leaves it out), a replica drains before it stops (a spot notice gives two minutes), readiness is vLLM's
    /health. It leaves the container's arguments alone (a strategic merge replaces a list whole: the
    Deployment's own ``--model`` and flags stay); the model it serves is named in an annotation."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(pool.model, tagged=tagged),
            "namespace": namespace,
            "annotations": {"meridian.dev/model": pool.model},
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"meridian.dev/model": slug(pool.model, tagged=tagged)}},
                "spec": {
                    "terminationGracePeriodSeconds": 120,
                    "containers": [
                        {
                            "name": "vllm",
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 8000},
                                "periodSeconds": 5,
                            },
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "30"]}}},
                        }
                    ],
                },
            }
        },
    }


def render(
    topology: Topology, *, controlplane_url: str, namespace: str = "meridian"
) -> dict[str, list[dict[str, Any]]]:
    """Region -> its manifests (a region is one cluster)."""
    out: dict[str, list[dict[str, Any]]] = {}
    shared = colliding(sorted({p.model for r in topology.regions for p in r.pools}))
    for region in topology.regions:
        if not region.pools:
            continue
        docs: list[dict[str, Any]] = [trigger_auth(namespace)]
        for pool in region.pools:
            docs.append(
                scaled_object(
                    region,
                    pool,
                    topology.autoscaling,
                    controlplane_url=controlplane_url,
                    namespace=namespace,
                    tagged=pool.model in shared,
                )
            )
            docs.append(deployment_patch(region, pool, namespace, tagged=pool.model in shared))
        out[region.name] = docs
    return out
