"""``meridian k8s``: the fleet itself for Kubernetes (pure: manifests as dicts, no I/O). Per region (one
cluster each): the edge — a Deployment read by geo-DNS health checks on ``/readyz``, its Service, a
PodDisruptionBudget, a NetworkPolicy, a ServiceMonitor for its internal metrics listener — and regions.yaml
as a ConfigMap; in the home region, the control plane beside the Redis primary. Secrets are referenced by
name, never rendered: the operator creates them (``SECRETS`` says which keys each holds). Pods run as a
non-root user on a read-only root filesystem with every capability dropped."""

from __future__ import annotations

from typing import Any

from fleet.acl import CONTROL_PLANE, edge_user
from fleet.state import Topology

EDGE_PORT, EDGE_INTERNAL_PORT, ADMIN_PORT, REDIS_PORT = 8080, 9090, 8700, 6379
SECRETS = {  # Secret -> the keys the pods read from it
    "meridian-redis": ("primary-url", "replica-url"),  # rediss:// URLs without credentials
    "meridian-edge": ("redis-password", "key-secret", "region-api-key"),
    "meridian-controlplane": ("redis-password", "key-secret", "admin-tokens"),
}
INFERENCE_EGRESS = (443, 8000)  # the regions' OpenAI-compatible servers (TLS, or vLLM's port in-cluster)


def _meta(name: str, namespace: str, component: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "meridian", "app.kubernetes.io/component": component}
    return {"name": name, "namespace": namespace, "labels": labels}


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "meridian", "app.kubernetes.io/component": component}


def _secret(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _container(
    name: str, image: str, command: list[str], env: list[dict[str, Any]], ports: list[int]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": command,
        "env": env,
        "ports": [{"containerPort": p, "name": f"p{p}"} for p in ports],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "topology", "mountPath": "/etc/meridian", "readOnly": True}],
    }


def _deployment(
    name: str, namespace: str, component: str, replicas: int, container: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(component)},
            "template": {
                "metadata": {"labels": _selector(component)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "volumes": [{"name": "topology", "configMap": {"name": "meridian-topology"}}],
                },
            },
        },
    }


def _service(name: str, namespace: str, component: str, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, component),
        "spec": {
            "selector": _selector(component),
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports.items()],
        },
    }


def _monitor(name: str, namespace: str, component: str, port: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(name, namespace, component),
        "spec": {
            "selector": {"matchLabels": _selector(component)},
            "endpoints": [{"port": port, "path": "/metrics"}],
        },
    }


def _policy(
    name: str, namespace: str, component: str, ingress: list[dict[str, Any]], egress_ports: tuple[int, ...]
) -> dict[str, Any]:
    """Ingress as given; egress to DNS and the given ports only."""
    dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace, component),
        "spec": {
            "podSelector": {"matchLabels": _selector(component)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [dns, {"ports": [{"protocol": "TCP", "port": p} for p in egress_ports]}],
        },
    }


def edge(region: str, *, image: str, namespace: str, replicas: int = 2) -> list[dict[str, Any]]:
    env = [
        {"name": "MERIDIAN_REGION", "value": region},
        {"name": "MERIDIAN_REGIONS_FILE", "value": "/etc/meridian/regions.yaml"},
        {"name": "MERIDIAN_PORT", "value": str(EDGE_PORT)},
        {"name": "MERIDIAN_INTERNAL_PORT", "value": str(EDGE_INTERNAL_PORT)},
        {"name": "MERIDIAN_INTERNAL_HOST", "value": "0.0.0.0"},
        {"name": "MERIDIAN_REDIS_USERNAME", "value": edge_user(region)},
        _secret("MERIDIAN_REDIS_URL", "meridian-redis", "replica-url"),
        _secret("MERIDIAN_REDIS_PRIMARY_URL", "meridian-redis", "primary-url"),
        _secret("MERIDIAN_REDIS_PASSWORD", "meridian-edge", "redis-password"),
        _secret("MERIDIAN_KEY_SECRET", "meridian-edge", "key-secret"),
        _secret("MERIDIAN_REGION_API_KEY", "meridian-edge", "region-api-key"),
    ]
    container = _container("edge", image, ["meridian", "edge"], env, [EDGE_PORT, EDGE_INTERNAL_PORT])
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": EDGE_PORT}, "periodSeconds": 2}
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": EDGE_PORT}, "periodSeconds": 10}
    clients = {"ports": [{"protocol": "TCP", "port": EDGE_PORT}]}  # from anywhere: the load balancer's
    scrapers = {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": EDGE_INTERNAL_PORT}],
    }
    return [
        _deployment("meridian-edge", namespace, "edge", replicas, container),
        _service("meridian-edge", namespace, "edge", {"http": EDGE_PORT, "internal": EDGE_INTERNAL_PORT}),
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta("meridian-edge", namespace, "edge"),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector("edge")}},
        },
        _policy("meridian-edge", namespace, "edge", [clients, scrapers], (REDIS_PORT, *INFERENCE_EGRESS)),
        _monitor("meridian-edge", namespace, "edge", "internal"),
    ]


def control_plane(*, image: str, namespace: str) -> list[dict[str, Any]]:
    env = [
        {"name": "MERIDIAN_REGIONS_FILE", "value": "/etc/meridian/regions.yaml"},
        {"name": "MERIDIAN_HOST", "value": "0.0.0.0"},
        {"name": "MERIDIAN_PORT", "value": str(ADMIN_PORT)},
        {"name": "MERIDIAN_AUTOSCALER", "value": "kubernetes"},
        {"name": "MERIDIAN_REDIS_USERNAME", "value": CONTROL_PLANE},
        _secret("MERIDIAN_REDIS_URL", "meridian-redis", "primary-url"),
        _secret("MERIDIAN_REDIS_PASSWORD", "meridian-controlplane", "redis-password"),
        _secret("MERIDIAN_KEY_SECRET", "meridian-controlplane", "key-secret"),
        _secret("MERIDIAN_ADMIN_TOKENS", "meridian-controlplane", "admin-tokens"),
    ]
    container = _container("controlplane", image, ["meridian", "controlplane"], env, [ADMIN_PORT])
    container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": ADMIN_PORT}, "periodSeconds": 5}
    container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": ADMIN_PORT}, "periodSeconds": 10}
    admins = {  # operators' and KEDA's namespaces only
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
            for ns in ("keda", "monitoring", "meridian-operators")
        ],
        "ports": [{"protocol": "TCP", "port": ADMIN_PORT}],
    }
    return [
        _deployment("meridian-controlplane", namespace, "controlplane", 1, container),
        _service("meridian-controlplane", namespace, "controlplane", {"http": ADMIN_PORT}),
        _policy(
            "meridian-controlplane", namespace, "controlplane", [admins], (REDIS_PORT, *INFERENCE_EGRESS)
        ),
        _monitor("meridian-controlplane", namespace, "controlplane", "http"),
    ]


def topology_map(regions_yaml: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("meridian-topology", namespace, "topology"),
        "data": {"regions.yaml": regions_yaml},
    }


def render_fleet(
    topology: Topology, regions_yaml: str, *, image: str, namespace: str = "meridian", home: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Region -> the fleet's manifests there; the control plane goes to ``home`` (default: the first)."""
    home = home or topology.regions[0].name
    out: dict[str, list[dict[str, Any]]] = {}
    for region in topology.regions:
        docs = [topology_map(regions_yaml, namespace), *edge(region.name, image=image, namespace=namespace)]
        if region.name == home:
            docs += control_plane(image=image, namespace=namespace)
        out[region.name] = docs
    return out
