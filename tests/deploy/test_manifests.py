"""deploy/kubernetes (Deployment, Service, HPA, PDB, PVC) and deploy/kserve (InferenceService):
Kubernetes' own schemas, then the wiring: probes on the app's real health routes, ports,
labels, non-root, the repository volume, and NORMSERVE_* names equal to the real settings."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy import commands
from tests.deploy.conftest import REPO, HealthRoutes, run, tool_env
from tests.deploy.dockerfile import Dockerfile
from tests.deploy.settings_env import PREFIX, field_of, settings_from_env

KUBERNETES = REPO / "deploy" / "kubernetes"
KSERVE = REPO / "deploy" / "kserve"
KSERVE_SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def by_kind() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") != "Kustomization":
                assert doc["kind"] not in found, f"two {doc['kind']}s"
                found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return by_kind()


@pytest.fixture(scope="module")
def inference_service() -> dict:
    (doc,) = documents(KSERVE / "inferenceservice.yaml")
    return doc


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return match


def check_container(
    container: dict, health_routes: HealthRoutes, settings_fields
) -> dict[str, str]:
    """What both the Deployment's and KServe's container must get right."""
    env = container_env(container)
    for name in env:
        if name.startswith(PREFIX):
            assert field_of(name) in settings_fields, f"{name} is not a setting"
    settings = settings_from_env({k: v for k, v in env.items() if k.startswith(PREFIX)})
    assert settings.host == "0.0.0.0"
    served_port = settings.port
    grpc = [] if settings.grpc_port is None else [settings.grpc_port]
    assert [p["containerPort"] for p in container["ports"]] == [served_port, *grpc]
    for probe_name, wanted in (
        ("readinessProbe", health_routes.ready),
        ("livenessProbe", health_routes.live),
        ("startupProbe", health_routes.live),
    ):
        probe = container.get(probe_name)
        if probe is None:
            assert probe_name == "startupProbe", f"no {probe_name}"
            continue
        get = probe["httpGet"]
        assert get["path"] in health_routes.get_paths, f"{probe_name}: {get['path']} is no route"
        assert get["path"] in wanted, f"{probe_name}: {get['path']} answers the wrong question"
        assert port_number(container, get["port"]) == served_port, probe_name
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]), "requests make HPA/scheduling work"
    assert "memory" in resources["limits"]
    security = container.get("securityContext", {})
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    return env


def test_kubernetes_schemas_accept_every_manifest():
    """The README's command: Kubernetes' published schemas, unknown fields rejected."""
    result = run(commands.KUBERNETES_VALIDATE, tool_env(), timeout=300)
    assert "did not validate" not in result.stdout + result.stderr
    kinds = {doc["kind"] for doc in by_kind().values()}
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    }


def test_kubernetes_schemas_reject_a_broken_manifest(manifests: dict[str, dict]):
    broken = yaml.safe_load(yaml.safe_dump(manifests["Deployment"]))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest():
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_deployment_container(
    manifests: dict[str, dict], health_routes: HealthRoutes, dockerfile: Dockerfile, settings_fields
):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = check_container(container, health_routes, settings_fields)
    # Non-root, with the image's numeric uid (runAsNonRoot can only check a number).
    image_user = dockerfile.stage("serve").last("USER")
    assert image_user is not None
    uid = int(image_user.args.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid != 0
    # The model repository comes from a volume, read-only, where the server reads it.
    repository = env["NORMSERVE_REPOSITORY"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == repository]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == manifests["PersistentVolumeClaim"]["metadata"]["name"]
    # ONNX Runtime threads match the CPU the pod asks for.
    assert int(env["NORMSERVE_INTRA_OP_THREADS"]) == int(container["resources"]["requests"]["cpu"])


def test_termination_grace_outlasts_prestop_and_drain(manifests: dict[str, dict], settings_fields):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    env = container_env(container)
    drain_field = settings_fields.get("drain_timeout_s")
    drain = float(env.get("NORMSERVE_DRAIN_TIMEOUT_S", drain_field.default if drain_field else 10))
    assert pod["terminationGracePeriodSeconds"] > pause + drain


def test_service_hpa_and_pdb_point_at_the_deployment(manifests: dict[str, dict]):
    deployment = manifests["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    targets = [port_number(container, port["targetPort"]) for port in service["spec"]["ports"]]
    assert targets == [port["containerPort"] for port in container["ports"]]

    hpa = manifests["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    metrics = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    for name in metrics:
        assert name in container["resources"]["requests"], f"HPA on {name} needs its request"
    assert hpa["spec"]["minReplicas"] >= 2, "one replica may be disrupted and one still serve"
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]

    pdb = manifests["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_kserve_inference_service_runs_the_serving_image_as_a_v2_custom_predictor(
    inference_service: dict,
    manifests: dict[str, dict],
    health_routes: HealthRoutes,
    dockerfile: Dockerfile,
    settings_fields,
):
    assert inference_service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert inference_service["kind"] == "InferenceService"
    predictor = inference_service["spec"]["predictor"]
    (container,) = predictor["containers"]
    # The container itself is a core/v1 Container: Kubernetes' schema checks it inside a Pod.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [container]},
    }
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    env = check_container(container, health_routes, settings_fields)
    (deployed,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == deployed["image"], "the same serving image"
    # KServe puts what STORAGE_URI names at /mnt/models: the server must read it there.
    assert env["STORAGE_URI"].split("://")[0] in {"pvc", "s3", "gs", "https", "http"}
    assert env["NORMSERVE_REPOSITORY"] == "/mnt/models"
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert predictor["scaleMetric"] in KSERVE_SCALE_METRICS
    assert 1 <= predictor["minReplicas"] < predictor["maxReplicas"]
