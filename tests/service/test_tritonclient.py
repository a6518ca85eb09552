"""The official ``tritonclient[http]`` against a real ``normserve serve``.

One server for the module: digits versions 1 and 2 (a real export), an inference key and an
admin key, and a 20 ms batching window so concurrent requests share batches.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.process import Server, running_server

# Served outputs against ONNX Runtime on the same file with its default options: the server
# runs the same graph; batching may take another kernel path, so not bit-exact.
RTOL, ATOL = 1e-5, 1e-6
API_KEY, ADMIN_KEY = "t0ken-for-inference", "t0ken-for-admin"


def auth() -> dict[str, str]:
    """A fresh dict each call: tritonclient writes its own headers into the one it is given."""
    return {"Authorization": f"Bearer {API_KEY}"}


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def repository(digits_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits/1 as exported, and digits/2: the same graph under another version number."""
    root = tmp_path_factory.mktemp("triton") / "repo"
    shutil.copytree(digits_repository / "digits" / "1", root / "digits" / "1")
    shutil.copytree(digits_repository / "digits" / "1", root / "digits" / "2")
    meta_path = root / "digits" / "2" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 2
    meta_path.write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "NORMSERVE_API_KEY": API_KEY,
        "NORMSERVE_ADMIN_KEY": ADMIN_KEY,
        "NORMSERVE_MAX_QUEUE_DELAY_MS": "20",
        "NORMSERVE_INTRA_OP_THREADS": "1",
    }
    log = tmp_path_factory.mktemp("triton-log") / "server.log"
    with running_server(repository, log, env) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.host_port, concurrency=8, network_timeout=30.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(repository: Path) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(repository / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 1, 8, 8)).astype(np.float32)


def tensor(x: np.ndarray, binary: bool) -> triton.InferInput:
    item = triton.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    return item


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "normserve"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(meta["extensions"])


def test_model_ready_metadata_and_config(client):
    assert client.is_model_ready("digits", headers=auth())
    assert client.is_model_ready("digits", "1", headers=auth())
    meta = client.get_model_metadata("digits", headers=auth())
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("digits", "1", headers=auth())["parameters"]["version"] == "1"
    config = client.get_model_config("digits", headers=auth())
    assert config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [1, 8, 8]
    assert config["output"][0]["dims"] == [10]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20_000


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("ask_outputs", [True, False], ids=["outputs", "no-outputs"])
def test_infer_matches_onnx_runtime(client, reference, binary, ask_outputs):
    x = digits(5, seed=int(binary) + 2 * int(ask_outputs))
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)] if ask_outputs else None
    result = client.infer(
        "digits", [tensor(x, binary)], outputs=outputs, request_id="req-1", headers=auth()
    )
    response = result.get_response()
    assert response["id"] == "req-1"
    assert response["model_name"] == "digits"
    assert response["model_version"] == "2"  # the unversioned path serves the newest
    (expected,) = reference.run(["logits"], {"input": x})
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=RTOL, atol=ATOL)


def test_infer_by_version_with_compression(client, reference):
    x = digits(3, seed=9)
    result = client.infer(
        "digits",
        [tensor(x, True)],
        model_version="1",
        headers=auth(),
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    assert result.get_response()["model_version"] == "1"
    (expected,) = reference.run(["logits"], {"input": x})
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=RTOL, atol=ATOL)


def test_classification_output_names_the_labels(client, reference):
    x = digits(2, seed=4)
    result = client.infer(
        "digits",
        [tensor(x, True)],
        outputs=[triton.InferRequestedOutput("logits", class_count=3)],
        headers=auth(),
    )
    top = result.as_numpy("logits")
    assert top.shape == (2, 3)
    (logits,) = reference.run(["logits"], {"input": x})
    for row, scores in zip(top, logits, strict=True):
        indices = [int(item.decode().split(":")[1]) for item in row]
        assert indices == list(np.argsort(-scores)[:3])
        assert [item.decode().split(":")[2] for item in row] == [str(i) for i in indices]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(client, reference):
    before = client.get_inference_statistics("digits", "2", headers=auth())["model_stats"][0]
    xs = [digits(1 + i % 3, seed=100 + i) for i in range(24)]
    pending = [client.async_infer("digits", [tensor(x, True)], headers=auth()) for x in xs]
    results = [p.get_result(timeout=30) for p in pending]
    for x, result in zip(xs, results, strict=True):
        (alone,) = reference.run(["logits"], {"input": x})
        np.testing.assert_allclose(result.as_numpy("logits"), alone, rtol=RTOL, atol=ATOL)
    after = client.get_inference_statistics("digits", "2", headers=auth())["model_stats"][0]
    samples = sum(len(x) for x in xs)
    assert after["inference_count"] - before["inference_count"] == samples
    executions = after["execution_count"] - before["execution_count"]
    assert executions < len(xs)  # some requests shared a batch


@pytest.mark.parametrize(
    ("call", "status", "needle"),
    [
        (lambda c: c.infer("nope", [tensor(digits(1), True)], headers=auth()), "404", "'nope'"),
        (
            lambda c: c.infer("digits", [tensor(digits(1), True)], "7", headers=auth()),
            "404",
            "no version 7",
        ),
        (
            lambda c: c.infer(
                "digits", [tensor(np.zeros((1, 1, 8, 9), np.float32), True)], headers=auth()
            ),
            "400",
            "dimension 3 must be 8",
        ),
        (
            lambda c: c.infer(
                "digits",
                [tensor(np.zeros((1, 1, 8, 8), np.float32), False)],
                outputs=[triton.InferRequestedOutput("probabilities")],
                headers=auth(),
            ),
            "400",
            "unknown output 'probabilities'",
        ),
        (
            lambda c: c.infer("digits", [tensor(digits(65), True)], headers=auth()),
            "400",
            "batch size must be between 1 and 64",
        ),
        (lambda c: c.get_model_metadata("digits"), "401", "Authorization: Bearer"),
        (lambda c: c.get_model_repository_index(headers=auth()), "401", "wrong key"),
    ],
)
def test_errors_reach_the_client_as_messages(client, call, status, needle):
    with pytest.raises(InferenceServerException) as error:
        call(client)
    assert error.value.status() == status
    assert needle in error.value.message()


def test_wrong_datatype_is_a_400(client):
    item = triton.InferInput("input", [1, 1, 8, 8], "FP64")
    item.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float64), binary_data=True)
    with pytest.raises(InferenceServerException) as error:
        client.infer("digits", [item], headers=auth())
    assert error.value.status() == "400"
    assert "expected 'FP32'" in error.value.message()


def test_repository_api_through_the_client(client):
    index = client.get_model_repository_index(headers=admin())
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("digits", "1", "READY"),
        ("digits", "2", "READY"),
    ]
    client.unload_model("digits", headers=admin())
    assert not client.is_model_ready("digits", headers=auth())
    client.load_model("digits", headers=admin())
    assert client.is_model_ready("digits", headers=auth())
    assert client.is_model_ready("digits", "1", headers=auth())
