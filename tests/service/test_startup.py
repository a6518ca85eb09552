"""Refusing to start wrong: the real ``normserve serve`` in a subprocess, one ``error:`` line on
stderr and exit 1 for an unknown ``NORMSERVE_*`` variable, an empty repository, a repository
path that points at a model or a version, and a busy port (before any model loads); and an
explicit option that starts empty for the repository API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from normserve.model_repository import RepositoryError
from normserve.service import Settings
from normserve.service.runtime.state import Runtime
from tests.service.fake_models import affine_reference, write_entry
from tests.service.process import running_server

NORMSERVE = str(Path(sys.executable).parent / "normserve")


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``normserve serve ARGS``, expected to refuse: it must exit by itself, quickly."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NORMSERVE_")}
    return subprocess.run(
        [NORMSERVE, "serve", "--host", "127.0.0.1", "--provider", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("NORMSERVE_PROVDER", "did you mean NORMSERVE_PROVIDER?"),
        ("NORMSERVE_MAX_BATCH", "the closest is NORMSERVE_MAX_BODY_BYTES"),
        ("normserve_log_levle", "did you mean NORMSERVE_LOG_LEVEL?"),
    ],
)
def test_unknown_variable_is_refused_with_the_closest_name(
    repository: Path, variable: str, hint: str
):
    line = _one_error_line(
        _serve(["--repository", str(repository), "--port", "0"], {variable: "4"})
    )
    assert f"unknown setting {variable}" in line
    assert hint in line


def test_variables_of_the_projects_other_tools_are_not_settings(repository: Path):
    # Accepted, so start-up goes on to the next check: here a busy port.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _one_error_line(
            _serve(
                ["--repository", str(repository), "--port", str(port)],
                {"NORMSERVE_BENCH_REPOSITORY": "x", "NORMSERVE_BASE_CACHE": "/tmp"},
            )
        )
    assert "cannot listen" in line


def test_empty_repository_is_refused_with_the_layout(tmp_path: Path):
    empty = tmp_path / "repo"
    empty.mkdir()
    line = _one_error_line(_serve(["--repository", str(empty), "--port", str(_free_port())]))
    assert f"model repository {empty} holds no models" in line
    assert "<repository>/<name>/<version>/{model.onnx, model.json}" in line
    assert "NORMSERVE_ALLOW_EMPTY_REPOSITORY=true" in line


@pytest.mark.parametrize(("inside", "what"), [("affine", "model"), ("affine/1", "version")])
def test_repository_pointing_into_an_entry_is_refused(repository: Path, inside: str, what: str):
    line = _one_error_line(
        _serve(["--repository", str(repository / inside), "--port", str(_free_port())])
    )
    assert f"is a {what} directory" in line
    assert f"point it at {repository}" in line
    # Starting empty is no way out: nothing could ever be added there.
    line = _one_error_line(
        _serve(
            [
                "--repository",
                str(repository / inside),
                "--port",
                str(_free_port()),
                "--allow-empty-repository",
                "true",
            ]
        )
    )
    assert f"is a {what} directory" in line


def test_busy_port_is_refused_before_any_model_loads(tmp_path: Path):
    # The only model cannot load (its ONNX file is garbage): had it been loaded first, that
    # would have been the error.
    repo = tmp_path / "repo"
    write_entry(repo, "broken", 1, onnx_bytes=b"not onnx")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(["--repository", str(repo), "--port", str(port)])
    line = _one_error_line(result)
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in line
    assert "broken" not in result.stdout + result.stderr
    # And with the port free, the broken model is what stops it.
    line = _one_error_line(_serve(["--repository", str(repo), "--port", str(_free_port())]))
    assert "broken" in line


def test_allow_empty_starts_and_serves_what_the_repository_api_loads(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"NORMSERVE_ALLOW_EMPTY_REPOSITORY": "true", "NORMSERVE_ADMIN_KEY": "k"}
    with running_server(repo, tmp_path / "server.log", env) as server:
        assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
        assert httpx.get(f"{server.url}/v2/models/affine").status_code == 404
        write_entry(repo, "affine", 1)
        auth = {"authorization": "Bearer k"}
        loaded = httpx.post(f"{server.url}/v2/repository/models/affine/load", headers=auth)
        assert loaded.status_code == 200, loaded.text
        x = np.array([[1.0, 2.0, -3.0]], dtype=np.float32)
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, -3]}]}
        answer = httpx.post(f"{server.url}/v2/models/affine/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        y = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 2)
        np.testing.assert_allclose(y, affine_reference(x)[0], rtol=1e-5, atol=1e-6)


def test_runtime_refuses_an_empty_repository_unless_allowed(tmp_path: Path):
    # The same rule for the app built in process (create_app loads through Runtime).
    with pytest.raises(RepositoryError, match="holds no models"):
        Runtime(Settings(repository=tmp_path, provider="cpu")).load_repository()
    runtime = Runtime(Settings(repository=tmp_path, provider="cpu", allow_empty_repository=True))
    runtime.load_repository()
    assert runtime.ready
    assert len(runtime.store) == 0
