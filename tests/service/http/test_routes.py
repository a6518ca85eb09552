"""Every route in-process, and every error it can return."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.fake_models import affine_reference

# Float32 matmul of 3 terms against a float64 reference.
RTOL, ATOL = 1e-6, 1e-6


def infer_body(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        **extra,
    }


def assert_error(response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    for needle in needles:
        assert needle in body["error"], body["error"]


def test_health_and_server_metadata(client: TestClient):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "normserve"
    assert isinstance(meta["extensions"], list)


def test_model_metadata_newest_and_by_version(client: TestClient):
    newest = client.get("/v2/models/affine").json()
    assert newest["name"] == "affine"
    assert newest["versions"] == ["1", "2"]
    assert newest["platform"] == "onnxruntime_onnx"
    assert newest["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert [o["name"] for o in newest["outputs"]] == ["y", "z"]
    assert newest["parameters"]["version"] == "2"
    assert newest["parameters"]["labels"] == ["left", "right"]
    assert client.get("/v2/models/affine/versions/1").json()["parameters"]["version"] == "1"


def test_model_ready(client: TestClient):
    assert client.get("/v2/models/affine/ready").json() == {
        "name": "affine",
        "version": "2",
        "ready": True,
    }
    assert client.get("/v2/models/affine/versions/1/ready").json()["version"] == "1"


@pytest.mark.parametrize(
    ("path", "version"), [("/v2/models/affine/infer", 2), ("/v2/models/affine/versions/1/infer", 1)]
)
def test_infer_matches_reference(client: TestClient, path: str, version: int):
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    response = client.post(path, json=infer_body(x, id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "affine"
    assert body["model_version"] == str(version)
    assert body["id"] == "req-7"
    y_ref, z_ref = affine_reference(x, version)
    outputs = {o["name"]: o for o in body["outputs"]}
    assert [o["name"] for o in body["outputs"]] == ["y", "z"]
    for name, ref in (("y", y_ref), ("z", z_ref)):
        assert outputs[name]["shape"] == [4, 2]
        assert outputs[name]["datatype"] == "FP32"
        np.testing.assert_allclose(
            np.array(outputs[name]["data"]).reshape(4, 2), ref, rtol=RTOL, atol=ATOL
        )


def test_infer_accepts_nested_data_and_returns_requested_outputs_in_order(client: TestClient):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "z"}],
    }
    response = client.post("/v2/models/affine/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["name"] == "z"
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(2, 2), affine_reference(x)[1], rtol=RTOL, atol=ATOL
    )


def _x(shape=(1, 3), datatype="FP32", data=None, name="x") -> dict:
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(shape),
                "datatype": datatype,
                "data": data if data is not None else [0.0] * int(np.prod(shape)),
            }
        ]
    }


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (_x(name="image"), ["inputs[0].name", "unknown input 'image'", "['x']"]),
        (_x(datatype="INT64"), ["datatype", "expected 'FP32'", "'INT64'"]),
        (_x(shape=(1, 4)), ["shape", "dimension 1 must be 3", "[N, 3]"]),
        (_x(shape=(1, 3, 1)), ["shape", "expected rank 2"]),
        (_x(shape=(9, 3)), ["batch size must be between 1 and 8", "got 9"]),
        (_x(shape=(0, 3), data=[]), ["batch size must be between 1 and 8", "got 0"]),
        (_x(shape=(1, -3), data=[1.0]), ["dimensions must be non-negative"]),
        (_x(data=[1.0, 2.0]), ["needs 3 values, got 2"]),
        (_x(data=["a", "b", "c"]), ["expected numbers for FP32"]),
        (_x(data=[[1.0, 2.0], [3.0]]), ["ragged"]),
        (_x(data=[1e300, 0.0, 0.0]), ["overflow FP32"]),
        ({"inputs": []}, ["inputs: expected a non-empty list"]),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]}, ["data: missing"]),
        ({**_x(), "outputs": [{"name": "w"}]}, ["outputs[0].name", "unknown output 'w'"]),
        ({**_x(), "outputs": [{"name": "y"}, {"name": "y"}]}, ["requested twice"]),
        ({**_x(), "id": 5}, ["id: expected a string"]),
        ([1, 2, 3], ["must be a JSON object"]),
    ],
)
def test_bad_infer_requests_are_400_naming_the_field(client: TestClient, body, needles):
    assert_error(client.post("/v2/models/affine/infer", json=body), 400, *needles)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "request body is empty"),
        (b'{"inputs": [', "not valid JSON"),
        (b"not json", "not valid JSON"),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", '
            b'"data": [NaN, 1, 2]}]}',
            "not valid JSON",
        ),
    ],
)
def test_malformed_bodies_are_400(client: TestClient, content: bytes, needle: str):
    assert_error(client.post("/v2/models/affine/infer", content=content), 400, needle)


@pytest.mark.parametrize(
    ("method", "path", "status", "needle"),
    [
        ("get", "/v2/models/nope", 404, "model 'nope' is not in the repository"),
        ("get", "/v2/models/nope/ready", 404, "model 'nope'"),
        ("post", "/v2/models/nope/infer", 404, "model 'nope'"),
        ("get", "/v2/models/affine/versions/3", 404, "has no version 3; available: [1, 2]"),
        ("post", "/v2/models/affine/versions/3/infer", 404, "has no version 3"),
        ("get", "/v2/models/affine/versions/latest", 400, "version must be a positive integer"),
        ("get", "/v2/models/affine/versions/0", 400, "version must be a positive integer"),
        ("get", "/v2/models/affine/versions/-1", 400, "version must be a positive integer"),
        ("get", "/v2/nothing-here", 404, "no route /v2/nothing-here"),
        ("delete", "/v2/models/affine", 405, "method DELETE is not allowed"),
        ("get", "/v2/models/affine/infer", 405, "method GET is not allowed"),
        ("put", "/v1/models/affine:predict", 405, "method PUT is not allowed"),
    ],
)
def test_unknown_names_and_routes(
    client: TestClient, method: str, path: str, status: int, needle: str
):
    kwargs = {"json": _x()} if method == "post" else {}
    assert_error(client.request(method.upper(), path, **kwargs), status, needle)


def test_body_over_the_limit_is_413(repository):
    from normserve.service import Settings, create_app

    settings = Settings(repository=repository, provider="cpu", max_body_bytes=1024)
    with TestClient(create_app(settings)) as small:
        response = small.post("/v2/models/affine/infer", content=b"[" + b"0," * 1000 + b"0]")
        assert_error(response, 413, "exceeds the limit of 1024 bytes")


def test_not_ready_is_503_with_retry_after(settings):
    from normserve.service import create_app
    from normserve.service.runtime.state import Runtime

    app = create_app(settings, Runtime(settings=settings))
    with TestClient(app) as c:
        app.state.runtime.ready = False  # as during start-up and shutdown
        response = c.get("/v2/health/ready")
        assert_error(response, 503, "not ready")
        assert response.headers["retry-after"] == "1"
        assert c.get("/v2/health/live").status_code == 200
