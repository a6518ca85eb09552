"""Fixtures for the deploy checks.

Structural fixtures (routes, settings, parsed files) are cheap. The engine-backed ones start one
private Docker engine per session (scripts/docker_engine.sh, the CONTAINERS.md recipe), build the
Python base stand-in and the serving image once, and always stop the engine and remove its
folders, bridge and mounts. Where the engine cannot start, the fixture fails with the engine's
own error: the tests that need it fail, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.deploy import commands
from tests.deploy.dockerfile import Dockerfile, read_dockerfile

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker_engine.sh"
VENV_BIN = REPO / ".venv" / "bin"


@dataclass(frozen=True)
class HealthRoutes:
    """The app's GET routes (no path parameters) classified by what they answer."""

    get_paths: frozenset[str]
    ready: frozenset[str]  # 503 before the models are loaded, 200 after
    live: frozenset[str]  # 200 before and after


@pytest.fixture(scope="session")
def health_routes(digits_repository: Path) -> HealthRoutes:
    """Read the routes from the real app and ask each one, before and after start-up."""
    from fastapi.testclient import TestClient

    from normserve.service import Settings, create_app

    app = create_app(Settings(repository=digits_repository, provider="cpu", intra_op_threads=1))
    # The app's own route table, as it publishes it (FastAPI includes routers lazily, so
    # app.routes does not list them).
    paths = sorted(
        path
        for path, operations in app.openapi()["paths"].items()
        if "get" in operations and "{" not in path
    )
    assert paths, "the app lists no GET routes"
    # Without the context manager the lifespan never runs: nothing is loaded, not ready.
    cold = TestClient(app, raise_server_exceptions=False)
    before = {path: cold.get(path).status_code for path in paths}
    with TestClient(app, raise_server_exceptions=False) as warm:
        after = {path: warm.get(path).status_code for path in paths}
    return HealthRoutes(
        get_paths=frozenset(paths),
        ready=frozenset(p for p in paths if (before[p], after[p]) == (503, 200)),
        live=frozenset(p for p in paths if (before[p], after[p]) == (200, 200)),
    )


@pytest.fixture(scope="session")
def settings_fields() -> dict[str, object]:
    """Settings field name -> pydantic FieldInfo, from the real class."""
    from normserve.service.settings import Settings

    return dict(Settings.model_fields)


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return read_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


# ---- engine-backed ---------------------------------------------------------------------------


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for deploy commands: the project's venv tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run(
    command: str | list[str],
    env: dict[str, str],
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; on failure, fail the test with its output."""
    shell = isinstance(command, str)
    try:
        result = subprocess.run(
            command,
            shell=shell,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            executable="/bin/bash" if shell else None,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command!r} ran past {timeout} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    if check and result.returncode != 0:
        pytest.fail(
            f"{command!r} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


@dataclass(frozen=True)
class Engine:
    env: dict[str, str]
    folder: Path

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], self.env, timeout=timeout, check=check)

    def sh(self, command: str, check: bool = True, timeout: float = 120) -> str:
        return run(command, self.env, timeout=timeout, check=check).stdout


@pytest.fixture(scope="session")
def container_tools() -> dict[str, str]:
    """Debian's docker.io, iptables, debootstrap and docker-compose, installed when missing."""
    env = tool_env()
    run(commands.ENGINE_DEPS, env, timeout=900)
    return env


@pytest.fixture(scope="session")
def engine(container_tools: dict[str, str]) -> Iterator[Engine]:
    """One private engine for the session, always stopped and cleaned up."""
    folder = Path(tempfile.mkdtemp(prefix="nsdocker.", dir="/tmp"))
    folder.rmdir()  # the script makes it and marks it as its own
    start = commands.ENGINE_START.format(engine_dir=folder)
    stop = commands.ENGINE_STOP.format(engine_dir=folder)
    try:
        started = run(start, container_tools, timeout=120)
        host = started.stdout.strip().removeprefix("export DOCKER_HOST=")
        assert host.startswith("unix://"), started.stdout
        yield Engine(env=tool_env({"DOCKER_HOST": host}), folder=folder)
    finally:
        run(stop, container_tools, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def python_base(engine: Engine) -> str:
    """The Python 3.11 slim stand-in made from Debian's packages (once per session)."""
    engine.sh(commands.ENGINE_BASE, timeout=900)
    return "local/python:3.11-slim"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_log: str
    repository: Path  # the host repository baked into the image


@pytest.fixture(scope="session")
def serve_image(engine: Engine, python_base: str) -> BuiltImage:
    """`make image`, as the README says: exports the default model first when missing."""
    result = run(commands.MAKE_IMAGE, engine.env, timeout=1200)
    return BuiltImage(
        tag=commands.IMAGE,
        build_log=result.stdout + result.stderr,
        repository=REPO / "model_repository",
    )
