"""The protocol surface in-process: config, stats, V1 predict, binary and compressed bodies,
auth, the repository API, metrics, headers, overload and timeouts."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from normserve.service import Settings, create_app
from tests.service.fake_models import affine_reference, write_entry
from tests.service.http.test_routes import assert_error, infer_body

RTOL, ATOL = 1e-6, 1e-6
API_KEY, ADMIN_KEY = "inference-secret", "admin-secret"


def client_for(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture
def keyed(repository: Path) -> Iterator[TestClient]:
    settings = Settings(repository=repository, provider="cpu", api_key=API_KEY, admin_key=ADMIN_KEY)
    with client_for(settings) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_config_is_triton_shaped(client: TestClient):
    config = client.get("/v2/models/affine/config").json()
    assert config["name"] == "affine"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [
        {"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [3]}
    ]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("y", [2]), ("z", [2])]
    batching = config["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 0
    assert batching["default_queue_policy"]["max_queue_size"] == 1024
    assert client.get("/v2/models/affine/versions/1/config").json()["version_policy"] == {
        "specific": {"versions": [1]}
    }


def test_per_model_batching_overrides_show_in_config(tmp_path: Path):
    root = tmp_path / "repo"
    overrides = {"max_queue_delay_ms": 2.5, "max_queue_size": 7, "queue_timeout_ms": 900}
    write_entry(root, "affine", 1, overrides={"dynamic_batching": overrides})
    with client_for(Settings(repository=root, provider="cpu")) as c:
        batching = c.get("/v2/models/affine/config").json()["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 2500
    assert batching["default_queue_policy"]["max_queue_size"] == 7
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 900_000


def test_stats_count_requests_batches_and_time(client: TestClient):
    x = np.ones((3, 3), np.float32)
    for _ in range(2):
        assert client.post("/v2/models/affine/infer", json=infer_body(x)).status_code == 200
    assert client.post("/v2/models/affine/infer", json={"inputs": []}).status_code == 400
    (stats,) = client.get("/v2/models/affine/versions/2/stats").json()["model_stats"]
    assert stats["name"] == "affine"
    assert stats["version"] == "2"
    assert stats["inference_count"] == 6
    assert stats["execution_count"] == 2
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2
    assert inference["fail"]["count"] == 1
    assert inference["queue"]["count"] == 2
    assert inference["compute_infer"]["ns"] > 0
    assert stats["batch_stats"][0]["batch_size"] == 3
    every = client.get("/v2/models/affine/stats").json()["model_stats"]
    assert [s["version"] for s in every] == ["1", "2"]
    assert len(client.get("/v2/models/stats").json()["model_stats"]) == 3


def test_infer_response_headers_time_the_request_and_carry_a_request_id(client: TestClient):
    x = np.ones((1, 3), np.float32)
    response = client.post(
        "/v2/models/affine/infer", json=infer_body(x), headers={"X-Request-ID": "trace-42"}
    )
    assert response.status_code == 200
    timing = response.headers["server-timing"]
    assert timing.startswith("queue;dur=")
    assert ", compute;dur=" in timing
    assert response.headers["x-request-id"] == "trace-42"
    generated = {client.get("/v2/health/live").headers["x-request-id"] for _ in range(2)}
    assert len(generated) == 2  # a new id per request
    assert all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", g) for g in generated)
    hostile = client.get("/v2/health/live", headers={"X-Request-ID": "a b\x7f"})
    assert hostile.headers["x-request-id"] != "a b\x7f"


def test_binary_request_without_content_type_and_binary_response(client: TestClient):
    x = np.random.default_rng(5).normal(size=(2, 3)).astype(np.float32)
    header = orjson.dumps(
        {
            "id": "bin",
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    response = client.post(
        "/v2/models/affine/versions/1/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = orjson.loads(response.content[:length])
    assert meta["id"] == "bin"
    y_size = meta["outputs"][0]["parameters"]["binary_data_size"]
    y = np.frombuffer(response.content[length : length + y_size], np.float32).reshape(2, 2)
    np.testing.assert_allclose(y, affine_reference(x, 1)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("coding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_request_and_response(client: TestClient, coding, pack):
    x = np.ones((2, 3), np.float32)
    response = client.post(
        "/v2/models/affine/infer",
        content=pack(orjson.dumps(infer_body(x))),
        headers={"Content-Encoding": coding, "Accept-Encoding": coding},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-encoding"] == coding
    # httpx inflates by itself: the body reads as plain JSON.
    (y, _z) = response.json()["outputs"]
    np.testing.assert_allclose(
        np.array(y["data"]).reshape(2, 2), affine_reference(x, 2)[0], rtol=RTOL, atol=ATOL
    )


def test_compressed_bomb_is_413(repository: Path):
    settings = Settings(repository=repository, provider="cpu", max_body_bytes=4096)
    with client_for(settings) as c:
        response = c.post(
            "/v2/models/affine/infer",
            content=gzip.compress(b" " * 100_000),
            headers={"Content-Encoding": "gzip"},
        )
    assert_error(response, 413, "inflates past the limit of 4096 bytes")


def test_unknown_content_encoding_is_415(client: TestClient):
    response = client.post(
        "/v2/models/affine/infer", content=b"x", headers={"Content-Encoding": "br"}
    )
    assert_error(response, 415, "Content-Encoding 'br' is not supported")


def test_declared_length_over_the_limit_is_refused_before_the_body_is_read(repository: Path):
    settings = Settings(repository=repository, provider="cpu", max_body_bytes=2048)
    with client_for(settings) as c:
        chunks_read = []

        def body():
            for _ in range(4):
                chunks_read.append(1)
                yield b"0" * 1024

        response = c.post(
            "/v2/models/affine/infer", content=body(), headers={"Content-Length": "4096"}
        )
    assert_error(response, 413, "request body of 4096 bytes exceeds the limit of 2048 bytes")


# -- V1 predict ---------------------------------------------------------------------------


def test_v1_predict_top_k_view_for_labelled_models(client: TestClient):
    x = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    response = client.post("/v1/models/affine:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    assert "server-timing" in response.headers
    first, second = response.json()["predictions"]
    y = affine_reference(x.astype(np.float32), 2)[0]
    probs = np.exp(y) / np.exp(y).sum(axis=1, keepdims=True)
    assert first["label"] == "left"
    assert first["index"] == 0
    assert second["label"] == "right"
    assert first["probability"] == pytest.approx(probs[0, 0], rel=1e-5)
    assert [p["label"] for p in first["top_k"]] == ["left", "right"]
    one = client.post("/v1/models/affine:predict", json={"instances": x.tolist(), "top_k": 1})
    assert len(one.json()["predictions"][0]["top_k"]) == 1


def test_v1_predict_rows_for_unlabelled_models(tmp_path: Path):
    root = tmp_path / "repo"
    write_entry(root, "plain", 1, overrides={"labels": None})
    with client_for(Settings(repository=root, provider="cpu")) as c:
        x = [[1.0, 2.0, 3.0]]
        response = c.post("/v1/models/plain:predict", json={"instances": x})
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        # two outputs: one object of rows per instance
        y, z = affine_reference(np.array(x, np.float32), 1)
        np.testing.assert_allclose(prediction["y"], y[0], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(prediction["z"], z[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"instances": []}, "instances: expected a non-empty list"),
        ({"instances": [[1.0, 2.0]]}, "dimension 1 must be 3"),
        ({"instances": [[1.0, 2.0, 3.0], [1.0]]}, "ragged"),
        ({"instances": [["a", "b", "c"]]}, "expected numbers"),
        ({"instances": [[0.0, 0.0, 0.0]] * 9}, "batch size must be between 1 and 8"),
        ({"instances": [[0.0, 0.0, 0.0]], "top_k": 0}, "top_k: expected a positive integer"),
        ({"instances": [{"w": [1, 2, 3]}]}, "missing ['x']; unknown ['w']"),
        ({"inputs": [[0.0, 0.0, 0.0]]}, "unknown key(s) ['inputs']"),
    ],
)
def test_v1_predict_bad_requests_are_400(client: TestClient, body, needle):
    assert_error(client.post("/v1/models/affine:predict", json=body), 400, needle)


def test_v1_predict_unknown_model_is_404(client: TestClient):
    assert_error(client.post("/v1/models/nope:predict", json={"instances": [[1]]}), 404, "nope")


# -- auth ---------------------------------------------------------------------------------


def test_api_key_guards_model_routes_and_leaves_health_and_metrics_open(keyed: TestClient):
    x = np.ones((1, 3), np.float32)
    for method, path, kwargs in [
        ("POST", "/v2/models/affine/infer", {"json": infer_body(x)}),
        ("POST", "/v1/models/affine:predict", {"json": {"instances": [[1, 2, 3]]}}),
        ("GET", "/v2/models/affine", {}),
        ("GET", "/v2/models/affine/config", {}),
    ]:
        missing = keyed.request(method, path, **kwargs)
        assert_error(missing, 401, "Authorization: Bearer")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(
            keyed.request(method, path, headers=bearer("wrong"), **kwargs), 401, "wrong key"
        )
        assert_error(
            keyed.request(method, path, headers={"Authorization": API_KEY}, **kwargs),
            401,
            "must be 'Bearer <key>'",
        )
        assert keyed.request(method, path, headers=bearer(API_KEY), **kwargs).status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics"):
        assert keyed.get(path).status_code == 200
    assert_error(
        keyed.post("/v2/repository/index", headers=bearer(API_KEY)), 401, "wrong key"
    )  # the inference key is not the admin key


def test_repository_api_is_off_without_an_admin_key(client: TestClient):
    for path in ("/v2/repository/index", "/v2/repository/models/affine/load"):
        assert_error(client.post(path), 403, "NORMSERVE_ADMIN_KEY")


def test_keys_never_reach_the_log(repository: Path, caplog: pytest.LogCaptureFixture):
    settings = Settings(repository=repository, provider="cpu", api_key=API_KEY, admin_key=ADMIN_KEY)
    caplog.set_level("DEBUG")
    with client_for(settings) as c:
        c.get("/v2/models/affine", headers=bearer("a-guess"))
        c.get("/v2/models/affine", headers=bearer(API_KEY))
        c.post("/v2/repository/index", headers=bearer(ADMIN_KEY))
    assert caplog.records  # the access log did log these requests
    assert API_KEY not in caplog.text
    assert ADMIN_KEY not in caplog.text
    assert "a-guess" not in caplog.text
    assert API_KEY not in repr(settings)


def test_repository_index_load_and_unload(keyed: TestClient, repository: Path):
    admin = bearer(ADMIN_KEY)
    index = keyed.post("/v2/repository/index", headers=admin).json()
    assert [(r["name"], r["version"], r["state"]) for r in index] == [
        ("affine", "1", "READY"),
        ("affine", "2", "READY"),
        ("other", "1", "READY"),
    ]
    assert keyed.post("/v2/repository/models/other/unload", headers=admin).json() == {}
    assert_error(keyed.get("/v2/models/other", headers=bearer(API_KEY)), 404, "'other'")
    assert keyed.get("/v2/health/ready").status_code == 200  # unloaded on purpose: still ready
    index = keyed.post("/v2/repository/index", headers=admin, json={"ready": False}).json()
    assert {(r["name"], r["state"], r["reason"]) for r in index if r["name"] == "other"} == {
        ("other", "UNAVAILABLE", "unloaded")
    }
    ready_only = keyed.post("/v2/repository/index", headers=admin, json={"ready": True}).json()
    assert {r["name"] for r in ready_only} == {"affine"}

    write_entry(repository, "affine", 3)  # a new version appears on disk
    assert keyed.post("/v2/repository/models/affine/load", headers=admin).status_code == 200
    assert keyed.post("/v2/repository/models/other/load", headers=admin).status_code == 200
    meta = keyed.get("/v2/models/affine", headers=bearer(API_KEY)).json()
    assert meta["versions"] == ["1", "2", "3"]
    assert keyed.get("/v2/models/other", headers=bearer(API_KEY)).status_code == 200
    x = np.ones((1, 3), np.float32)
    body = keyed.post("/v2/models/affine/infer", json=infer_body(x), headers=bearer(API_KEY)).json()
    assert body["model_version"] == "3"
    np.testing.assert_allclose(
        body["outputs"][0]["data"], affine_reference(x, 3)[0][0], rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v2/repository/models/ghost/load", {}, 404, "no directory"),
        ("/v2/repository/models/ghost/unload", {}, 404, "is not loaded"),
        ("/v2/repository/models/affine/load", {"parameters": {"config": "{}"}}, 400, "config"),
        ("/v2/repository/index", {"ready": "yes"}, 400, "ready: expected true or false"),
    ],
)
def test_repository_api_errors(keyed: TestClient, path, body, status, needle):
    assert_error(keyed.post(path, json=body, headers=bearer(ADMIN_KEY)), status, needle)


def test_loading_a_broken_version_is_refused_and_the_old_one_keeps_serving(
    keyed: TestClient, repository: Path
):
    write_entry(repository, "affine", 3, onnx_bytes=b"not onnx")  # sha matches, graph does not
    response = keyed.post("/v2/repository/models/affine/load", headers=bearer(ADMIN_KEY))
    assert_error(response, 400, "failed to load 'affine'", "ONNX Runtime cannot load")
    assert "still serving version(s) [1, 2]" in response.json()["error"]
    meta = keyed.get("/v2/models/affine", headers=bearer(API_KEY)).json()
    assert meta["versions"] == ["1", "2"]
    index = keyed.post("/v2/repository/index", headers=bearer(ADMIN_KEY)).json()
    (broken,) = [r for r in index if r["version"] == "3"]
    assert broken["state"] == "UNAVAILABLE"
    assert "ONNX Runtime cannot load" in broken["reason"]


# -- metrics ------------------------------------------------------------------------------


def test_metrics_count_requests_failures_latency_batches_and_loads(client: TestClient):
    x = np.ones((2, 3), np.float32)
    assert client.post("/v2/models/affine/infer", json=infer_body(x)).status_code == 200
    assert client.post("/v2/models/affine/infer", json={"inputs": []}).status_code == 400
    text = client.get("/metrics").text
    lines = set(text.splitlines())
    assert (
        'normserve_inference_requests_total{model="affine",status="200",version="2"} 1.0' in lines
    )
    assert (
        'normserve_inference_failures_total{model="affine",status="400",version="2"} 1.0' in lines
    )
    assert 'normserve_request_duration_seconds_count{model="affine",version="2"} 2.0' in lines
    assert 'normserve_queue_duration_seconds_count{model="affine",version="2"} 1.0' in lines
    assert 'normserve_compute_duration_seconds_count{model="affine",version="2"} 1.0' in lines
    assert 'normserve_batch_size_bucket{le="2.0",model="affine",version="2"} 1.0' in lines
    assert 'normserve_queue_depth{model="affine",version="2"} 0.0' in lines
    assert "normserve_inflight_requests 1.0" in lines  # the scrape itself
    assert (
        'normserve_model_events_total{event="load",model="affine",outcome="success",version="1"}'
        " 1.0" in lines
    )
    assert (
        'normserve_http_requests_total{method="POST",route="/v2/models/{model_name}/infer",'
        'status="400"} 1.0' in lines
    )
    # Triton's names, for dashboards built on them
    assert 'nv_inference_request_success{model="affine",version="2"} 1' in lines
    assert 'nv_inference_request_failure{model="affine",version="2"} 1' in lines
    assert 'nv_inference_count{model="affine",version="2"} 2' in lines
    assert 'nv_inference_exec_count{model="affine",version="2"} 1' in lines
    assert "# TYPE nv_inference_queue_duration_us counter" in lines


# -- overload and timeouts -----------------------------------------------------------------


@pytest.fixture
def slow_queue(tmp_path: Path) -> Iterator[TestClient]:
    """One request waits 600 ms for company; the queue holds one; a queued request times out
    after 300 ms unless the request asks for less."""
    root = tmp_path / "repo"
    batching = {"max_queue_delay_ms": 600, "max_queue_size": 1, "queue_timeout_ms": 300}
    write_entry(root, "affine", 1, overrides={"dynamic_batching": batching})
    with client_for(Settings(repository=root, provider="cpu")) as c:
        yield c


def test_a_request_still_queued_at_its_timeout_is_504(slow_queue: TestClient):
    response = slow_queue.post("/v2/models/affine/infer", json=infer_body(np.ones((1, 3))))
    assert_error(response, 504, "waited 300 ms in the queue")
    sooner = slow_queue.post(
        "/v2/models/affine/infer",
        json=infer_body(np.ones((1, 3)), parameters={"timeout": 50_000}),
    )
    assert_error(sooner, 504, "waited 50 ms in the queue")


def test_a_full_queue_is_503_with_retry_after(slow_queue: TestClient):
    import threading

    results: list[int] = []
    body = infer_body(np.ones((1, 3)))
    first = threading.Thread(
        target=lambda: results.append(
            slow_queue.post("/v2/models/affine/infer", json=body).status_code
        )
    )
    first.start()
    try:
        for _ in range(100):  # until the first request sits in the queue
            depth = [
                line
                for line in slow_queue.get("/metrics").text.splitlines()
                if line.startswith("normserve_queue_depth{")
            ]
            if depth and depth[0].endswith(" 1.0"):
                break
        second = slow_queue.post("/v2/models/affine/infer", json=body)
    finally:
        first.join(timeout=10)
    assert_error(second, 503, "queue full (1 requests waiting)")
    assert second.headers["retry-after"] == "1"
    assert results == [504]  # the first one timed out in the queue, as configured


# -- golden probe at load --------------------------------------------------------------------


def test_start_up_refuses_a_version_whose_golden_probe_fails(tmp_path: Path):
    from normserve.model_repository import RepositoryError
    from tests.service.fake_models import affine_probe

    root = tmp_path / "repo"
    write_entry(root, "affine", 1, overrides={"golden_probe": affine_probe(1, skew=0.01)})
    with (
        pytest.raises(RepositoryError, match="golden probe output 'y' differs"),
        client_for(Settings(repository=root, provider="cpu")),
    ):
        pass


def test_an_entry_without_a_golden_probe_loads_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1, overrides={"golden_probe": None})
    caplog.set_level("INFO", logger="normserve.service")
    with client_for(Settings(repository=root, provider="cpu")) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/affine").json()["parameters"]["golden_probe"] is False
    assert "no golden probe: warm-up only" in caplog.text


def test_an_empty_outputs_list_returns_every_output(client: TestClient):
    x = np.ones((1, 3), np.float32)
    response = client.post("/v2/models/affine/infer", json=infer_body(x, outputs=[]))
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["y", "z"]
