"""Property-based fuzzing of V2 infer bodies, JSON and binary, beyond what a schema can say.

schemathesis (test_fuzz_schema.py) draws bodies from the OpenAPI schema, which cannot express
"``data`` holds as many finite numbers as the shape has elements" or the binary framing, so
almost all it sends is refused early. Here hypothesis builds a valid request for the served
model, then applies at most one mutation (each breaking one rule the server enforces), and
sends it JSON or binary, gzipped or not, through the real ASGI stack in-process. The property:
a valid request is a 200 whose every output equals the reference for its own input; a mutated
one is a 400 (413 past the body limit) with ``{"error"}``; nothing else, ever.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from normserve.service import Settings, create_app
from tests.service.fake_models import affine_reference, write_entry

# |x| ≤ 100 and |W| ≤ 3 (float32 against a float64 reference).
RTOL, ATOL = 1e-5, 1e-4
MAX_BATCH = 8
MUTATIONS = [
    "batch_zero",
    "batch_over",
    "wrong_dim",
    "wrong_rank",
    "negative_dim",
    "count_short",
    "count_long",
    "datatype",
    "nan",
    "infinity",
    "overflow",
    "string_value",
    "ragged",
    "input_name",
    "output_name",
    "header_length_long",
    "size_odd",
    "trailing_bytes",
    "data_and_binary",
    "truncated",
]
JSON_ONLY = {"overflow", "string_value", "ragged"}
BINARY_ONLY = {"header_length_long", "size_odd", "trailing_bytes", "data_and_binary"}


@dataclass(frozen=True)
class Plan:
    x: np.ndarray  # (n, 3) float32: what a valid request carries
    binary: bool
    nested: bool
    outputs: tuple[str, ...] | None
    binary_outputs: bool
    compressed: bool
    mutation: str | None


@st.composite
def plans(draw: st.DrawFn, mutation: str | None = None) -> Plan:
    n = draw(st.integers(1, MAX_BATCH))
    finite = st.floats(-100, 100, width=32, allow_nan=False, allow_infinity=False)
    x = draw(arrays(np.float32, (n, 3), elements=finite))
    binary = mutation in BINARY_ONLY or draw(st.booleans()) if mutation not in JSON_ONLY else False
    return Plan(
        x=x,
        binary=binary,
        nested=draw(st.booleans()),
        outputs=draw(st.sampled_from([None, ("y",), ("z", "y"), ("z",)])),
        binary_outputs=draw(st.booleans()),
        compressed=draw(st.booleans()),
        mutation=mutation,
    )


def encode(plan: Plan) -> tuple[bytes, dict[str, str]]:
    """The request body and headers for ``plan``, with its mutation applied."""
    m = plan.mutation
    x = plan.x
    shape = list(x.shape)
    values: list = x.tolist() if plan.nested else x.ravel().tolist()
    tensor: dict = {"name": "x", "shape": shape, "datatype": "FP32"}
    if m == "batch_zero":
        x, values, tensor["shape"] = x[:0], [], [0, 3]
    elif m == "batch_over":
        x = np.resize(x, (MAX_BATCH + 1, 3))
        values, tensor["shape"] = x.ravel().tolist(), [MAX_BATCH + 1, 3]
    elif m == "wrong_dim":
        x = np.resize(x, (shape[0], 4))
        values, tensor["shape"] = x.ravel().tolist(), [shape[0], 4]
    elif m == "wrong_rank":
        tensor["shape"] = [*shape, 1]
    elif m == "negative_dim":
        tensor["shape"] = [shape[0], -3]
    elif m == "datatype":
        tensor["datatype"] = "FP64"
    elif m == "input_name":
        tensor["name"] = "image"
    raw = np.ascontiguousarray(x, np.float32).tobytes()
    flat = np.asarray(values, dtype=np.float64).ravel().tolist() if values else []
    if m == "count_short":
        raw, flat = raw[:-4], flat[:-1]
    elif m == "count_long":
        raw, flat = raw + raw[:4], [*flat, 1.0]
    elif m in ("nan", "infinity"):
        bad = float("nan") if m == "nan" else float("inf")
        raw = struct.pack("<f", bad) + raw[4:]
        flat = [bad, *flat[1:]]
    elif m == "overflow":
        flat = [1e39, *flat[1:]]
    elif m == "string_value":
        flat = ["1.0", *flat[1:]]
    elif m == "ragged":
        flat = [flat[:2], flat[2:]]
    data = values if plan.nested and m not in ("count_short", "count_long") else flat
    if m in ("nan", "infinity", "overflow", "string_value", "ragged"):
        data = flat
    request: dict = {"inputs": [tensor], "id": "fuzz"}
    if plan.outputs is not None:
        request["outputs"] = [
            {"name": name, "parameters": {"binary_data": plan.binary_outputs}}
            for name in plan.outputs
        ]
    if m == "output_name":
        request["outputs"] = [{"name": "w"}]
    headers: dict[str, str] = {}
    if plan.binary:
        size = len(raw) - (1 if m == "size_odd" else 0)
        tensor["parameters"] = {"binary_data_size": size}
        if m == "data_and_binary":
            tensor["data"] = flat
        header = json.dumps(request, allow_nan=True).encode()
        tail = raw[:size] + (b"\0\0\0\0" if m == "trailing_bytes" else b"")
        length = len(header) + (len(tail) + 1 if m == "header_length_long" else 0)
        headers["Inference-Header-Content-Length"] = str(length)
        body = header + tail
    else:
        tensor["data"] = data
        body = json.dumps(request, allow_nan=True).encode()
    if m == "truncated":
        body = body[: len(body) // 2]
        headers.pop("Inference-Header-Content-Length", None)
    if plan.compressed:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def decode_outputs(response) -> dict[str, np.ndarray]:
    body = response.content
    length = response.headers.get("inference-header-content-length")
    header = orjson.loads(body if length is None else body[: int(length)])
    assert header["id"] == "fuzz"
    offset = 0 if length is None else int(length)
    arrays_out = {}
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.array(out["data"], np.float64)
        else:
            array = np.frombuffer(body[offset : offset + size], np.float32).astype(np.float64)
            offset += size
        arrays_out[out["name"]] = array.reshape(out["shape"])
    assert offset in (0, len(body))
    return arrays_out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fuzz-infer") / "repo"
    write_entry(root, "affine", 1, max_batch_size=MAX_BATCH)
    settings_ = Settings(repository=root, provider="cpu", intra_op_threads=1)
    with TestClient(create_app(settings_), raise_server_exceptions=False) as c:
        yield c


FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def post(client: TestClient, plan: Plan):
    body, headers = encode(plan)
    return client.post("/v2/models/affine/versions/1/infer", content=body, headers=headers)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(plan=plans())
def test_valid_bodies_get_exactly_their_own_answer(client: TestClient, plan: Plan):
    response = post(client, plan)
    assert response.status_code == 200, response.text
    outputs = decode_outputs(response)
    y, z = affine_reference(plan.x, 1)
    expected = {"y": y, "z": z}
    assert list(outputs) == list(plan.outputs or ("y", "z"))
    for name, array in outputs.items():
        np.testing.assert_allclose(array, expected[name], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_broken_rule_is_a_400_with_an_error(client: TestClient, mutation: str):
    @settings(FUZZ_SETTINGS, max_examples=12)
    @given(plan=plans(mutation))
    def check(plan: Plan) -> None:
        response = post(client, plan)
        assert response.status_code == 400, (mutation, response.status_code, response.text)
        assert set(response.json()) == {"error"}

    check()
