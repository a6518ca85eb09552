"""docker-compose.yml: parsed and checked against the real settings, routes and Dockerfile;
and `docker-compose config` on it (Debian's docker-compose 1.29)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy import commands
from tests.deploy.conftest import REPO, HealthRoutes, run
from tests.deploy.dockerfile import Dockerfile
from tests.deploy.settings_env import PREFIX, env_name, field_of, plain, settings_from_env

INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
FIXED_BY_CONTAINER = {"repository", "host", "port", "grpc_port"}


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def test_services_and_profiles(compose: dict):
    services = compose["services"]
    assert set(services) == {"serve", "serve-gpu", "export"}
    assert "profiles" not in services["serve"], "serve starts with a plain `up`"
    assert services["serve-gpu"]["profiles"] == ["gpu"]
    assert services["export"]["profiles"] == ["export"]


def test_build_targets_are_dockerfile_stages(compose: dict, dockerfile: Dockerfile):
    stages = {stage.name for stage in dockerfile.stages}
    targets = {name: svc["build"]["target"] for name, svc in compose["services"].items()}
    assert targets == {"serve": "serve", "serve-gpu": "gpu", "export": "export"}
    assert set(targets.values()) <= stages


def test_serve_environment_names_are_exactly_the_settings_fields(compose: dict, settings_fields):
    env = compose["services"]["serve"]["environment"]
    assert set(env) == {env_name(f) for f in settings_fields}, (
        f"missing: {sorted({env_name(f) for f in settings_fields} - set(env))}, "
        f"unknown: {sorted(set(env) - {env_name(f) for f in settings_fields})}"
    )


def test_serve_environment_defaults_are_the_settings_defaults(
    compose: dict, settings_fields, dockerfile: Dockerfile
):
    """Each ${NORMSERVE_X:-default} reads its own name and defaults to the server's default;
    the three the container fixes equal the image's ENV; a bare name passes a secret through."""
    env = compose["services"]["serve"]["environment"]
    image_env = dockerfile.stage("serve").env()
    resolved: dict[str, str] = {}
    for name, value in env.items():
        field = field_of(name)
        if field in FIXED_BY_CONTAINER:
            assert str(value) == image_env[name], name
            resolved[name] = str(value)
            continue
        if value is None:
            assert settings_fields[field].default is None, (
                f"{name} passes through but has a default"
            )
            continue
        match = INTERPOLATION.fullmatch(str(value))
        assert match, f"{name}: expected ${{{name}:-default}}, got {value!r}"
        assert match["name"] == name, f"{name} reads ${{{match['name']}}}"
        assert match["default"] is not None, f"{name} has no default"
        resolved[name] = match["default"]
    settings = settings_from_env(resolved)
    for field, info in settings_fields.items():
        if field not in FIXED_BY_CONTAINER:
            assert plain(getattr(settings, field)) == info.default, field


def test_only_settings_carry_the_normserve_prefix(compose: dict, settings_fields):
    """The server refuses unknown NORMSERVE_* variables, so compose-only knobs must not use it."""
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    for match in INTERPOLATION.finditer(text):
        if match["name"].startswith(PREFIX):
            assert field_of(match["name"]) in settings_fields, match["name"]


def test_serve_is_healthchecked_on_the_ready_route_and_runs_locked_down(
    compose: dict, dockerfile: Dockerfile, health_routes: HealthRoutes, settings_fields
):
    serve = compose["services"]["serve"]
    image = dockerfile.stage("serve")
    healthcheck = image.last("HEALTHCHECK")
    assert healthcheck is not None
    assert serve["healthcheck"]["test"] == ["CMD", *healthcheck.exec_form()]
    assert serve["restart"] in {"always", "unless-stopped", "on-failure"}
    assert serve["read_only"] is True
    user = image.last("USER")
    assert user is not None
    assert serve["user"] == user.args
    assert serve["cap_drop"] == ["ALL"]
    # The ports: container sides are the ports the server binds (HTTP, gRPC); host sides loopback
    # by default.
    bound = [str(serve["environment"][f"NORMSERVE_{name}"]) for name in ("PORT", "GRPC_PORT")]
    published = []
    for port in serve["ports"]:
        match = INTERPOLATION.match(port)
        assert match, port
        assert match["default"].startswith("127.0.0.1:")
        published.append(port[match.end() :].removeprefix(":"))
    assert published == bound
    # Compose waits longer than the server's own drain before it sends SIGKILL.
    assert serve["stop_signal"] == "SIGTERM"
    drain = settings_fields.get("drain_timeout_s")
    if drain is not None:
        assert duration_s(serve["stop_grace_period"]) > drain.default


def test_repository_volume_is_where_the_server_reads(compose: dict):
    services = compose["services"]
    repository = services["serve"]["environment"]["NORMSERVE_REPOSITORY"]
    serve_mounts = [v for v in services["serve"]["volumes"] if f":{repository}" in v]
    assert len(serve_mounts) == 1
    assert serve_mounts[0].endswith(f":{repository}:ro"), "serving only reads the repository"
    source = serve_mounts[0].rsplit(":", 2)[0]
    volume = INTERPOLATION.fullmatch(source)
    assert volume, source
    assert volume["default"] in compose["volumes"], "a named volume by default"
    export = services["export"]
    assert f"{source}:{repository}" in export["volumes"], "export writes the same volume"
    command = export["command"]
    assert command[command.index("--repository") + 1] == repository
    checkpoint = command[0]
    checkpoints = [v for v in export["volumes"] if v.endswith(":ro") and v != serve_mounts[0]]
    assert any(checkpoint.startswith(v.rsplit(":", 2)[1] + "/") for v in checkpoints), checkpoints


def test_gpu_profile_reserves_an_nvidia_device_and_selects_cuda(compose: dict):
    gpu = compose["services"]["serve-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["environment"]["NORMSERVE_PROVIDER"] == "cuda"
    other = {k: v for k, v in gpu["environment"].items() if k != "NORMSERVE_PROVIDER"}
    serve_env = compose["services"]["serve"]["environment"]
    assert other == {k: v for k, v in serve_env.items() if k != "NORMSERVE_PROVIDER"}
    assert gpu["ports"] != compose["services"]["serve"]["ports"], "both can run at once"


@pytest.mark.docker
def test_docker_compose_config_accepts_the_file_and_reads_the_environment(
    container_tools: dict[str, str], settings_fields
):
    clean = {k: v for k, v in container_tools.items() if not k.startswith(PREFIX)}
    result = run(commands.COMPOSE_CONFIG, clean, timeout=120)
    config = yaml.safe_load(result.stdout)
    env = config["services"]["serve"]["environment"]
    present = {k: str(v) for k, v in env.items() if v is not None}
    settings = settings_from_env(present)
    for field, info in settings_fields.items():
        if field not in FIXED_BY_CONTAINER:
            assert plain(getattr(settings, field)) == info.default, field
    # A value set in the shell reaches the container.
    custom = {**clean, "NORMSERVE_LOG_LEVEL": "debug", "NORMSERVE_API_KEY": "s3cret"}
    config = yaml.safe_load(run(commands.COMPOSE_CONFIG, custom, timeout=120).stdout)
    env = config["services"]["serve"]["environment"]
    assert env["NORMSERVE_LOG_LEVEL"] == "debug"
    assert env["NORMSERVE_API_KEY"] == "s3cret"


@pytest.mark.docker
def test_docker_compose_config_rejects_a_broken_file(container_tools: dict[str, str], tmp_path):
    broken = tmp_path / "docker-compose.yml"
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    broken.write_text(text.replace("restart: unless-stopped", "restart: [sometimes]"))
    result = run(
        ["docker-compose", "-f", str(broken), "config"], container_tools, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "restart" in result.stderr


def test_compose_file_is_valid_yaml_with_no_duplicate_keys():
    class Strict(yaml.SafeLoader):
        pass

    def no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
        keys = [k.value for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
        duplicated = {k for k in keys if keys.count(k) > 1}
        assert not duplicated, f"duplicate keys {duplicated} at line {node.start_mark.line + 1}"
        return loader.construct_mapping(node, deep=deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)
    assert yaml.load((REPO / "docker-compose.yml").read_text(encoding="utf-8"), Strict)
