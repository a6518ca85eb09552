"""The gRPC port in the deployment files: the KServe gRPC predictor routes the port the server
binds, and its readiness asks the health service the server registers."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import yaml

from normserve.service.grpc.servicer import SERVICE
from tests.deploy.settings_env import PREFIX, settings_from_env

ROOT = Path(__file__).resolve().parents[3]


def load(path: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]
    return doc


def test_kserve_grpc_predictor_routes_the_grpc_port():
    service = load("deploy/kserve/inferenceservice-grpc.yaml")
    http_service = load("deploy/kserve/inferenceservice.yaml")
    (container,) = service["spec"]["predictor"]["containers"]
    (http_container,) = http_service["spec"]["predictor"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c"}}
    pod["spec"] = {"containers": [container]}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = settings_from_env({k: v for k, v in env.items() if k.startswith(PREFIX)})
    (port,) = container["ports"]
    assert port["name"] == "h2c", "KServe's name for a gRPC port"
    assert port["containerPort"] == settings.grpc_port
    assert container["readinessProbe"]["grpc"] == {"port": settings.grpc_port, "service": SERVICE}
    assert container["livenessProbe"]["tcpSocket"]["port"] == settings.grpc_port
    assert container["image"] == http_container["image"]
    # The HTTP predictor serves no gRPC: its one routed port is HTTP.
    http_env = {e["name"]: e["value"] for e in http_container["env"]}
    assert (
        settings_from_env({"NORMSERVE_GRPC_PORT": http_env["NORMSERVE_GRPC_PORT"]}).grpc_port
        is None
    )


def test_kubernetes_service_publishes_the_grpc_port_as_h2c():
    service = load("deploy/kubernetes/service.yaml")
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    deployment = load("deploy/kubernetes/deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (target,) = [p for p in container["ports"] if p["name"] == grpc_port["targetPort"]]
    assert target["containerPort"] == int(env["NORMSERVE_GRPC_PORT"]) == grpc_port["port"]
