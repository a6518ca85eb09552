"""The Dockerfile: hadolint, and the structure the issue asks of each stage."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy import commands
from tests.deploy.conftest import REPO, VENV_BIN, HealthRoutes
from tests.deploy.dockerfile import Dockerfile, Instruction, Stage

SOURCE_DIRS = ("normserve/", "service/", "models/", "export/")


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def is_source_copy(instruction: Instruction) -> bool:
    return instruction.keyword == "COPY" and any(
        word in SOURCE_DIRS for word in instruction.words()
    )


def is_dependency_install(instruction: Instruction) -> bool:
    return instruction.keyword == "RUN" and "-r requirements.txt" in instruction.args


def pip_installs(stage: Stage) -> list[str]:
    """Every `pip install ...` command inside the stage's RUN lines."""
    found = []
    for run in stage.all("RUN"):
        found += [part.strip() for part in run.args.split("&&") if "pip install" in part]
    return found


def test_hadolint_is_clean():
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--format", "json", "Dockerfile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_catches_a_broken_dockerfile(tmp_path: Path):
    """The lint can fail: an unpinned apt install and a shell-form entrypoint are reported."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        "FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n"
        "ENTRYPOINT normserve serve\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--format", "json", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3008", "DL3025"} <= codes, codes
    assert result.returncode != 0


def test_every_hadolint_ignore_is_explained(dockerfile: Dockerfile):
    for line, directive, comment_above in dockerfile.hadolint_ignores:
        assert comment_above, f"line {line}: {directive} needs a comment right above saying why"
        assert not comment_above.startswith("# hadolint"), f"line {line}: explain {directive}"
        assert len(comment_above) > 20, f"line {line}: explain {directive} in words"


def test_stage_order_lets_the_classic_builder_build_serve_alone(dockerfile: Dockerfile):
    names = [stage.name for stage in dockerfile.stages]
    for name in ("serve-deps", "serve", "export", "gpu"):
        assert name in names, names
    # The classic builder runs every stage before the target: nothing needing torch or CUDA may
    # come before `serve`.
    assert names.index("serve") < names.index("export")
    assert names.index("serve") < names.index("gpu")
    for stage in dockerfile.stages[: names.index("serve") + 1]:
        assert "CUDA" not in stage.base
        assert not any("torch" in cmd for cmd in pip_installs(stage)), stage.name


def test_bases_are_configurable(dockerfile: Dockerfile):
    assert dockerfile.global_args["PYTHON_IMAGE"] == "python:3.11-slim"
    for name in ("serve-deps", "serve", "export"):
        assert dockerfile.stage(name).base == "${PYTHON_IMAGE}"
    cuda = dockerfile.global_args["CUDA_IMAGE"]
    assert cuda.startswith("nvidia/cuda:"), cuda
    assert "runtime" in cuda, cuda
    assert dockerfile.stage("gpu").base == "${CUDA_IMAGE}"


@pytest.mark.parametrize("name", ["serve-deps", "export", "gpu"])
def test_dependencies_are_installed_before_the_source_is_copied(dockerfile: Dockerfile, name):
    stage = dockerfile.stage(name)
    install = stage.position(is_dependency_install)
    source = stage.position(is_source_copy)
    assert install >= 0, f"{name}: no dependency install from requirements.txt"
    assert source >= 0, f"{name}: no source copy"
    assert install < source, f"{name}: the source is copied before the dependencies install"
    installs = pip_installs(stage)
    assert installs, name
    for command in installs:
        assert "-c constraints.txt" in command, f"{name}: unpinned install: {command}"


def test_serve_stage_runs_as_non_root_on_the_container_interface(
    dockerfile: Dockerfile, settings_fields
):
    serve = dockerfile.stage("serve")
    user = serve.last("USER")
    assert user is not None
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit(), "a numeric uid (runAsNonRoot checks it)"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    env = serve.env()
    assert env["NORMSERVE_HOST"] == "0.0.0.0"
    exposed = serve.last("EXPOSE")
    assert exposed is not None
    assert exposed.args.split() == [env["NORMSERVE_PORT"], env["NORMSERVE_GRPC_PORT"]]
    assert exposed.args == "8000 8001"  # HTTP and gRPC, Triton's ports
    for name in env:
        if name.startswith("NORMSERVE_"):
            assert name.removeprefix("NORMSERVE_").lower() in settings_fields, name


def test_serve_stage_copies_the_repository_where_the_server_reads_it(dockerfile: Dockerfile):
    serve = dockerfile.stage("serve")
    copies = [c.words() for c in serve.all("COPY") if "${MODEL_REPOSITORY}/" in c.words()]
    assert len(copies) == 1, "one COPY of the model repository"
    destination = copies[0][-1].rstrip("/")
    assert destination == serve.env()["NORMSERVE_REPOSITORY"] == "/models"
    args = {k: v for a in serve.all("ARG") for k, v in a.env().items()}
    assert args["MODEL_REPOSITORY"] == "model_repository"


def test_entrypoint_is_exec_form_and_the_healthcheck_asks_the_ready_route(
    dockerfile: Dockerfile, health_routes: HealthRoutes
):
    import importlib.util

    for name in ("serve", "gpu"):
        stage = dockerfile.stage(name)
        entrypoint = stage.last("ENTRYPOINT")
        assert entrypoint is not None
        assert entrypoint.exec_form() == ["normserve", "serve"], "exec form: SIGTERM reaches it"
        healthcheck = stage.last("HEALTHCHECK")
        assert healthcheck is not None
        command = healthcheck.exec_form()
        assert command is not None, healthcheck.args
        assert command[0] == "python", healthcheck.args
        script_in_image = command[1]
        copies = [c.words() for c in stage.all("COPY")]
        sources = [w[-2] for w in copies if w[-1] == script_in_image]
        assert sources == ["deploy/docker/healthcheck.py"], (name, copies)
    spec = importlib.util.spec_from_file_location(
        "healthcheck", REPO / "deploy" / "docker" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.READY_PATH in health_routes.ready


def test_export_stage_installs_cpu_torch_pinned_by_constraints(dockerfile: Dockerfile):
    export = dockerfile.stage("export")
    torch_installs = [c for c in pip_installs(export) if re.search(r"\btorch\b", c)]
    assert len(torch_installs) == 1, torch_installs
    assert "TORCH_INDEX_URL" in torch_installs[0]
    args = {k: v for a in export.all("ARG") for k, v in a.env().items()}
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert constraint_pins()["torch"] == "2.13.0"
    assert any("--extra export" in r.args for r in export.all("RUN"))
    entrypoint = export.last("ENTRYPOINT")
    assert entrypoint is not None
    assert entrypoint.exec_form() == ["normserve", "export"]
    user = export.last("USER")
    assert user is not None
    assert not user.args.startswith(("0", "root"))


def test_gpu_stage_swaps_in_onnxruntime_gpu_at_the_same_version(dockerfile: Dockerfile):
    gpu = dockerfile.stage("gpu")
    assert any("--replace onnxruntime=onnxruntime-gpu" in r.args for r in gpu.all("RUN"))
    pins = constraint_pins()
    assert pins["onnxruntime-gpu"] == pins["onnxruntime"]
    assert gpu.env()["NORMSERVE_PROVIDER"] == "cuda"
    user = gpu.last("USER")
    assert user is not None
    assert user.args.split(":")[0].isdigit()
    assert int(user.args.split(":")[0]) != 0


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent folder counts."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = re.escape(pattern.strip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_heavy_and_private_files_out_and_the_copied_ones_in(
    dockerfile: Dockerfile,
):
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for private in (
        ".git/HEAD",
        ".venv/bin/python",
        "checkpoints/digits_cnn.pt",
        "model_repository/x.pt",
        "tests/deploy/test_image.py",
        "service/__pycache__/app.cpython-311.pyc",
    ):
        assert dockerignore_excludes(private, patterns), f"{private} would enter the context"
    copied = set()
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            words = [w for w in copy.words() if not w.startswith("--")]
            copied.update(words[:-1])
    copied = {c.replace("${MODEL_REPOSITORY}", "model_repository") for c in copied}
    assert copied >= {"pyproject.toml", "constraints.txt", "normserve/", "model_repository/"}
    for source in copied:
        assert not dockerignore_excludes(source, patterns), f"{source} is COPY'd but ignored"
        assert not dockerignore_excludes(f"{source.rstrip('/')}/x.py", patterns), source


def test_hadolint_command_is_the_readme_one():
    assert commands.HADOLINT == "hadolint Dockerfile"
