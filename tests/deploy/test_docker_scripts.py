"""deploy/docker/: the requirements reader the Dockerfile runs, and the container health check."""

from __future__ import annotations

import http.server
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

from tests.deploy.conftest import REPO

SCRIPTS = REPO / "deploy" / "docker"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements_module = load("pyproject_requirements")
healthcheck = load("healthcheck")


def names(requirements: list[str]) -> list[str]:
    return [r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in requirements]


def test_serving_requirements_are_the_base_dependencies_without_torch():
    reqs = requirements_module.requirements(REPO / "pyproject.toml")
    assert {"onnxruntime", "numpy", "fastapi", "uvicorn", "pydantic"} <= set(names(reqs))
    assert not any(n.startswith("torch") for n in names(reqs))


def test_export_extra_adds_torch(tmp_path: Path):
    reqs = requirements_module.requirements(REPO / "pyproject.toml", extras=["export"])
    assert "torch==2.13.0" in reqs
    with pytest.raises(SystemExit, match="no extra 'nope'"):
        requirements_module.requirements(REPO / "pyproject.toml", extras=["nope"])


def test_replace_keeps_the_specifier_and_refuses_an_unknown_name(tmp_path: Path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["onnxruntime>=1.18; python_version >= \'3.11\'",'
        ' "numpy>=1.26"]\n',
        encoding="utf-8",
    )
    reqs = requirements_module.requirements(pyproject, replace={"onnxruntime": "onnxruntime-gpu"})
    assert reqs == ["onnxruntime-gpu>=1.18; python_version >= '3.11'", "numpy>=1.26"]
    with pytest.raises(SystemExit, match="torch is not a dependency"):
        requirements_module.requirements(pyproject, replace={"torch": "torch-cpu"})


def test_command_line_prints_one_requirement_a_line():
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "pyproject_requirements.py"),
            str(REPO / "pyproject.toml"),
            "--replace",
            "onnxruntime=onnxruntime-gpu",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    lines = result.stdout.splitlines()
    assert "onnxruntime-gpu" in names(lines)
    assert "onnxruntime" not in names(lines)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"status": 200, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_healthcheck_passes_on_200_and_fails_on_503(fake_server):
    port, handler = fake_server
    assert healthcheck.check(port) is None
    assert handler.seen == [healthcheck.READY_PATH]
    handler.status = 503
    reason = healthcheck.check(port)
    assert reason is not None
    assert "503" in reason


def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    reason = healthcheck.check(port, timeout=1.0)
    assert reason is not None
    assert str(port) in reason


def test_healthcheck_exit_status_follows_the_port_setting(fake_server):
    port, handler = fake_server
    script = str(SCRIPTS / "healthcheck.py")
    env = {**os.environ, "NORMSERVE_PORT": str(port)}
    ok = subprocess.run([sys.executable, script], env=env, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    handler.status = 503
    bad = subprocess.run([sys.executable, script], env=env, capture_output=True, timeout=30)
    assert bad.returncode == 1
    assert b"not ready" in bad.stderr
