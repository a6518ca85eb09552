"""Execution providers: the choice from the setting, and CUDA where a GPU is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from normserve.service import Settings, create_app
from normserve.service.runtime.providers import CPU, CUDA, ProviderError, select_providers
from normserve.service.runtime.state import Runtime
from tests.service.fake_models import affine_reference, write_entry
from tests.service.http.test_routes import infer_body

HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.mark.parametrize(
    ("setting", "available", "chosen"),
    [
        ("auto", [CPU], [CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
    ],
)
def test_provider_choice(setting, available, chosen):
    assert select_providers(setting, available) == chosen


def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ProviderError, match="install onnxruntime-gpu"):
        select_providers("cuda", [CPU])


@pytest.mark.skipif(HAS_CUDA, reason="this ONNX Runtime offers CUDA: the refusal cannot happen")
def test_serving_with_provider_cuda_fails_start_up_without_cuda(repository: Path):
    with pytest.raises(ProviderError, match="provider 'cuda' requested"):
        Runtime(Settings(repository=repository, provider="cuda")).load_repository()


def test_thread_settings_reach_the_session(repository: Path):
    runtime = Runtime(
        Settings(repository=repository, provider="cpu", intra_op_threads=1, inter_op_threads=2)
    )
    runtime.load_repository()
    session = runtime.store.get("affine").model.session
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL


@pytest.mark.gpu
@pytest.mark.skipif(
    not HAS_CUDA,
    reason="ONNX Runtime has no CUDAExecutionProvider here (CPU build or no GPU)",
)
def test_cuda_serves_the_same_answers_as_cpu(tmp_path: Path):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    settings = Settings(repository=root, provider="cuda")
    with TestClient(create_app(settings)) as client:
        config = client.get("/v2/models/affine/config").json()
        assert config["instance_group"][0]["kind"] == "KIND_GPU"
        response = client.post("/v2/models/affine/infer", json=infer_body(x))
        assert response.status_code == 200, response.text
        y = np.array(response.json()["outputs"][0]["data"]).reshape(4, 2)
    # GPU matmul may use TF32 or another summation order: a looser tolerance than on CPU.
    np.testing.assert_allclose(y, affine_reference(x, 1)[0], rtol=1e-3, atol=1e-4)
