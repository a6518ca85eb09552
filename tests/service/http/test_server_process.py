"""The real ``normserve serve`` on a free loopback port: start, wait for ready, infer, stop."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
import torch

from normserve.export.rebuild import build_eval_model
from normserve.models.checkpoint import load_checkpoint
from normserve.models.datasets import load_dataset
from normserve.service.http.server import DrainingServer, serve
from normserve.service.settings import Settings
from tests.service.process import Server, running_server

# The export's own parity gate (DESIGN.md §3): served outputs equal eager within it.
RTOL, ATOL = 1e-4, 1e-5


def test_real_server_predicts_what_the_eager_model_predicts(
    digits_repository: Path, digits_checkpoint: Path, tmp_path: Path
):
    with running_server(digits_repository, tmp_path / "server.log") as server:
        _predict_then_ctrl_c(server, digits_checkpoint)
    assert "Application shutdown complete" in server.log()


def _predict_then_ctrl_c(server: Server, digits_checkpoint: Path) -> None:
    url, proc = server.url, server.proc
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


def test_serve_freezes_what_it_loaded_before_serving(
    digits_repository: Path, monkeypatch: pytest.MonkeyPatch
):
    """What start-up loaded is out of the collector's sight when serving begins, so a full
    collection under load does not pause the loop to scan it (~45 ms for ~70,000 objects)."""
    seen: list[int] = []

    def run(self: DrainingServer, sockets: list) -> None:  # what uvicorn would serve on
        seen.append(gc.get_freeze_count())
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(DrainingServer, "run", run)
    gc.unfreeze()
    try:
        serve(Settings(repository=digits_repository, port=0, provider="cpu"))
        assert len(seen) == 1
        assert seen[0] > 10_000  # the modules, app and model loaded, not a handful
    finally:
        gc.unfreeze()
