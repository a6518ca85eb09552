"""The official ``tritonclient.grpc`` against a real ``normserve serve``: every call it makes
for the features normserve serves, answers checked against references and against HTTP."""

from __future__ import annotations

import grpc
import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from normserve.service.grpc.servicer import SERVICE
from tests.service.fake_models import affine_reference
from tests.service.grpc.conftest import admin, auth
from tests.service.grpc.models import pair_reference

# Served float32 against a float64 reference of the same arithmetic: a few float32 roundings.
RTOL, ATOL = 1e-5, 1e-6


def inputs_for(x: np.ndarray) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def typed_inputs_for(x: np.ndarray) -> list[triton.InferInput]:
    """Values in ``contents.fp32_contents`` instead of ``raw_input_contents``."""
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor._get_tensor().contents.fp32_contents.extend(x.ravel().tolist())
    return [tensor]


def sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3)) * 4).astype(np.float32)


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as error:
        call()
    return error.value.status(), error.value.message()


def test_health_and_server_metadata(client, grpc_server):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    over_http = httpx.get(f"{grpc_server.url}/v2").json()
    assert metadata == {k: v for k, v in over_http.items()}


def test_standard_health_service(grpc_server):
    with grpc.insecure_channel(grpc_server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_model_ready_metadata_and_config_match_http(client, grpc_server):
    assert client.is_model_ready("affine", headers=auth())
    assert client.is_model_ready("affine", "1", headers=auth())
    assert not client.is_model_ready("affine", "7", headers=auth())
    assert not client.is_model_ready("nothing", headers=auth())
    http_auth = {"Authorization": auth()["authorization"]}
    for name, version in (("affine", ""), ("affine", "1"), ("pair", "")):
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
        metadata = client.get_model_metadata(name, version, headers=auth(), as_json=True)
        expected = httpx.get(f"{grpc_server.url}{path}", headers=http_auth).json()
        assert metadata["name"] == expected["name"]
        assert metadata["versions"] == expected["versions"]
        assert metadata["platform"] == expected["platform"]
        for kind in ("inputs", "outputs"):
            got = [{**t, "shape": [int(d) for d in t["shape"]]} for t in metadata[kind]]
            assert got == expected[kind]
        config = client.get_model_config(name, version, headers=auth(), as_json=True)["config"]
        http_config = httpx.get(f"{grpc_server.url}{path}/config", headers=http_auth).json()
        assert config["name"] == http_config["name"]
        assert config["max_batch_size"] == http_config["max_batch_size"]
        assert [i["name"] for i in config["input"]] == [i["name"] for i in http_config["input"]]
        for got, want in zip(config["input"], http_config["input"], strict=True):
            assert got["data_type"] == want["data_type"]
            assert [int(d) for d in got["dims"]] == want["dims"]
        queue = config["dynamic_batching"]["default_queue_policy"]
        want_queue = http_config["dynamic_batching"]["default_queue_policy"]
        assert int(queue["max_queue_size"]) == want_queue["max_queue_size"]


@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("build", [inputs_for, typed_inputs_for], ids=["raw", "typed"])
def test_infer_batch_sizes_both_encodings(client, n, build):
    x = sample(n, seed=n)
    outputs = [triton.InferRequestedOutput("z"), triton.InferRequestedOutput("y")]
    result = client.infer("affine", build(x), "1", outputs=outputs, headers=auth(), request_id="r")
    y, z = affine_reference(x, version=1)
    np.testing.assert_allclose(result.as_numpy("y"), y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("z"), z, rtol=RTOL, atol=ATOL)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["z", "y"]
    assert (response.model_name, response.model_version, response.id) == ("affine", "1", "r")


def test_versions_and_newest(client):
    x = sample(4, seed=11)
    for version, scale in (("1", 1), ("2", 2), ("", 2)):
        result = client.infer("affine", inputs_for(x), version, headers=auth())
        assert result.get_response().model_version == str(scale)
        y, _ = affine_reference(x, version=scale)
        np.testing.assert_allclose(result.as_numpy("y"), y, rtol=RTOL, atol=ATOL)


def test_two_inputs_two_outputs(client):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 3)).astype(np.float32)
    b = rng.integers(-1000, 1000, (3, 3)).astype(np.int32)
    tensors = [triton.InferInput("a", [3, 3], "FP32"), triton.InferInput("b", [3, 3], "INT32")]
    tensors[0].set_data_from_numpy(a)
    tensors[1].set_data_from_numpy(b)
    result = client.infer("pair", tensors, headers=auth())
    expected_sum, expected_product = pair_reference(a, b)
    np.testing.assert_allclose(result.as_numpy("sum"), expected_sum, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("product"), expected_product, rtol=RTOL, atol=ATOL)


def test_classification(client):
    x = sample(5, seed=3)
    result = client.infer(
        "affine",
        inputs_for(x),
        "1",
        outputs=[triton.InferRequestedOutput("y", class_count=2)],
        headers=auth(),
    )
    classes = result.as_numpy("y")
    assert classes.shape == (5, 2)
    y, _ = affine_reference(x)
    for row, picks in zip(y, classes, strict=True):
        assert int(picks[0].decode().split(":")[1]) == int(np.argmax(row))


def test_statistics_count_what_was_served(client):
    before = client.get_inference_statistics("pair", "1", headers=auth(), as_json=True)
    x = np.ones((2, 3), np.float32)
    tensors = [triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [2, 3], "INT32")]
    tensors[0].set_data_from_numpy(x)
    tensors[1].set_data_from_numpy(x.astype(np.int32))
    client.infer("pair", tensors, headers=auth())
    after = client.get_inference_statistics("pair", "1", headers=auth(), as_json=True)
    (old,), (new,) = before["model_stats"], after["model_stats"]
    assert int(new["inference_count"]) == int(old.get("inference_count", 0)) + 2
    success = new["inference_stats"]["success"]
    assert int(success["count"]) == int(old["inference_stats"]["success"].get("count", 0)) + 1
    everything = client.get_inference_statistics(headers=auth(), as_json=True)
    assert {(s["name"], s["version"]) for s in everything["model_stats"]} == {
        ("affine", "1"),
        ("affine", "2"),
        ("pair", "1"),
    }


def test_errors_carry_http_messages(client, grpc_server):
    http_auth = {"Authorization": auth()["authorization"]}
    x = sample(2, seed=1)
    cases = [
        (
            "StatusCode.NOT_FOUND",
            lambda: client.infer("nothing", inputs_for(x), headers=auth()),
            "/v2/models/nothing/infer",
        ),
        (
            "StatusCode.NOT_FOUND",
            lambda: client.infer("affine", inputs_for(x), "9", headers=auth()),
            "/v2/models/affine/versions/9/infer",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            lambda: client.infer("affine", inputs_for(x), "x1", headers=auth()),
            "/v2/models/affine/versions/x1/infer",
        ),
    ]
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]
    }
    for code, call, path in cases:
        status, message = status_of(call)
        over_http = httpx.post(f"{grpc_server.url}{path}", json=body, headers=http_auth)
        assert status == code
        assert message == over_http.json()["error"]
    wrong = triton.InferInput("x", [2, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 4), np.float32))
    status, message = status_of(lambda: client.infer("affine", [wrong], headers=auth()))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message == "inputs[0] (x).shape: dimension 1 must be 3 [N, 3], got [2, 4]"


def test_keys(client):
    x = sample(1, seed=2)
    status, message = status_of(lambda: client.infer("affine", inputs_for(x)))
    assert status == "StatusCode.UNAUTHENTICATED"
    assert message == "inference needs an 'Authorization: Bearer <key>' header"
    status, message = status_of(
        lambda: client.get_model_metadata("affine", headers={"authorization": "Bearer nope"})
    )
    assert (status, message) == ("StatusCode.UNAUTHENTICATED", "inference: wrong key")
    status, _ = status_of(lambda: client.get_model_repository_index(headers=auth()))
    assert status == "StatusCode.UNAUTHENTICATED", "the inference key is not the admin key"
    assert client.is_server_live(), "health stays open"
    assert client.is_server_ready()


def test_repository_control_with_the_admin_key(client):
    index = client.get_model_repository_index(headers=admin(), as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("affine", "1", "READY"),
        ("affine", "2", "READY"),
        ("pair", "1", "READY"),
    }
    client.unload_model("pair", headers=admin())
    assert not client.is_model_ready("pair", headers=auth())
    status, _ = status_of(lambda: client.get_model_metadata("pair", headers=auth()))
    assert status == "StatusCode.NOT_FOUND"
    client.load_model("pair", headers=admin())
    assert client.is_model_ready("pair", headers=auth())
    status, message = status_of(lambda: client.load_model("nothing", headers=admin()))
    assert status == "StatusCode.NOT_FOUND"
    assert "nothing" in message
    status, message = status_of(lambda: client.load_model("pair", headers=admin(), config="{}"))
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "are not supported" in message


def test_streaming_infer_answers_in_order(client):
    answers: list = []
    client.start_stream(
        callback=lambda result, error: answers.append((result, error)), headers=auth()
    )
    try:
        xs = [sample(n, seed=20 + n) for n in (1, 3, 2)]
        for i, x in enumerate(xs):
            client.async_stream_infer("affine", inputs_for(x), model_version="1", request_id=str(i))
        client.async_stream_infer("nothing", inputs_for(xs[0]), request_id="bad")
    finally:
        client.stop_stream()
    assert len(answers) == 4
    for (result, error), (i, x) in zip(answers[:3], enumerate(xs), strict=True):
        assert error is None
        assert result.get_response().id == str(i)
        np.testing.assert_allclose(
            result.as_numpy("y"), affine_reference(x)[0], rtol=RTOL, atol=ATOL
        )
    result, error = answers[3]
    assert result is None
    assert "'nothing' is not in the repository" in error.message()


def test_unserved_methods_say_so(client):
    status, message = status_of(client.get_system_shared_memory_status)
    assert status == "StatusCode.UNIMPLEMENTED"
    assert "shared memory is not supported" in message
    status, _ = status_of(client.get_log_settings)
    assert status == "StatusCode.UNIMPLEMENTED"
