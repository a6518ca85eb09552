"""The real ``normserve serve`` on a free loopback port: start, wait for ready, infer, stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import torch

from export.pipeline import build_eval_model
from models.checkpoint import load_checkpoint
from models.datasets import load_dataset

# The export's own parity gate (DESIGN.md §3): served outputs equal eager within it.
RTOL, ATOL = 1e-4, 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout_s} s")


@pytest.fixture
def server(digits_repository: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "normserve"),
        "serve",
        "--repository",
        str(digits_repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_real_server_predicts_what_the_eager_model_predicts(server, digits_checkpoint: Path):
    url, proc = server
    data = load_dataset("digits", seed=1)
    x = data.x_val[:5]
    body = {
        "id": "digits-1",
        "inputs": [
            {
                "name": "input",
                "shape": [5, 1, 8, 8],
                "datatype": "FP32",
                "data": x.numpy().ravel().tolist(),
            }
        ],
    }
    response = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=10.0)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    with torch.no_grad():
        expected = build_eval_model(load_checkpoint(digits_checkpoint))(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)

    bad = httpx.post(f"{url}/v2/models/digits/infer", content=b"{", timeout=10.0)
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"]

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=15) == 0
    log = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in log


def test_broken_repository_fails_start_with_one_line(tmp_path: Path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.json").write_text("{not json")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "normserve"),
            "serve",
            "--repository",
            str(tmp_path),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "model.json" in lines[0]
    assert "cannot read JSON" in lines[0]
