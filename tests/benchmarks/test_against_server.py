"""The benchmark tooling against a real ``normserve serve``: its V2 bodies are answered correctly,
and its load generator's counts agree with the server's own statistics. No timing is asserted."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from benchmarks.features import server_metadata, server_stats, stats_delta, supports_binary
from benchmarks.http_client import HttpConnection, encode_request
from benchmarks.loadgen import run_load
from benchmarks.report import BEGIN, END, replace_between_markers
from benchmarks.server_process import HOST, running_server
from benchmarks.v2_payload import HEADER_LENGTH, binary_body, decode_response, infer_request
from tests.service.fake_models import affine_reference, write_entry

pytestmark = pytest.mark.slow

X = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench-repo")
    write_entry(root, "affine", 1)
    log = root.parent / "server.log"
    env = {"NORMSERVE_PROVIDER": "cpu", "NORMSERVE_LOG_LEVEL": "warning"}
    with running_server(root, log, env=env, ready_timeout_s=60) as proc:
        assert proc.ready_s > 0
        yield proc
    assert proc.process.returncode is not None  # stopped on exit


def test_binary_body_layout():
    body, header_length = binary_body({"x": X})
    header = orjson.loads(body[:header_length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": X.nbytes}
    assert header["parameters"] == {"binary_data_output": True}
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], "<f4").reshape(2, 3), X)


@pytest.mark.parametrize("binary", [False, True])
def test_requests_are_answered_with_the_models_outputs(server, binary):
    if binary and not supports_binary(server_metadata(HOST, server.port)):
        pytest.fail("the server no longer lists the binary_tensor_data extension")
    request = infer_request(f"{HOST}:{server.port}", "affine", {"x": X}, binary=binary)
    with HttpConnection(HOST, server.port) as conn:
        response = conn.request(request)
    assert (HEADER_LENGTH.lower() in response.headers) is binary
    outputs = decode_response(response)
    y, z = affine_reference(X)
    np.testing.assert_allclose(outputs["y"], y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outputs["z"], z, rtol=1e-6, atol=1e-6)


def test_load_generator_counts_agree_with_the_server(server):
    request = infer_request(f"{HOST}:{server.port}", "affine", {"x": X[:1]}, binary=False)
    before = server_stats(HOST, server.port, "affine")
    result = run_load(
        HOST, server.port, request, concurrency=3, requests=24, warmup_requests=6, timeout_s=60
    )
    delta = stats_delta(before, server_stats(HOST, server.port, "affine"))
    assert result.statuses == {200: 24}
    assert delta["requests"] == 24 + 6  # the server answered the warm-up too
    assert delta["failed"] == 0
    assert delta["mean_batch"] >= 1.0


def test_error_statuses_are_counted_as_errors(server):
    bad = encode_request(
        "POST", "/v2/models/affine/infer", host=HOST, body=b'{"inputs": []}', headers={}
    )
    result = run_load(HOST, server.port, bad, concurrency=2, requests=5)
    assert result.statuses == {400: 5}
    assert result.errors == 5


def test_memory_and_cpu_of_the_server_are_readable(server):
    memory = server.memory_kib()
    assert memory["VmHWM"] >= memory["VmRSS"] > 0
    cpu = server.cpu_seconds()
    assert set(cpu) == {"main", "other"}
    assert cpu["main"] > 0


def test_readme_block_is_replaced_only_between_markers():
    text = f"# title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    assert replace_between_markers(text, "new table\n") == (
        f"# title\n\nbefore\n{BEGIN}\nnew table\n{END}\nafter\n"
    )
    assert replace_between_markers("# no markers\n", "x") is None
