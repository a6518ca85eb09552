"""Hostile and malformed JSON bodies against a real server: each is a 4xx with ``{"error"}``
naming the field, never a 5xx, and the server answers correctly afterwards.

Non-finite values: NaN and Infinity are not JSON (RFC 8259), and a number that overflows the
input's datatype would become one; all are refused with 400, and binary tensors holding them
are refused too (tests/reliability/test_binary_hostile.py), so a model never sees them.
Several of these cases are also checked in-process (tests/service/http/test_routes.py); here they go
through uvicorn, the inference lane and a socket, with the exact bytes given.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import MAX_BODY_BYTES, assert_error, port_of
from tests.reliability.raw_http import exchange, request_bytes

pytestmark = pytest.mark.usefixtures("healthy_after")

INFER = "/v2/models/affine/versions/1/infer"
PREDICT = "/v1/models/affine:predict"


def tensor(shape: str = "[1, 3]", data: str = "[1, 2, 3]", datatype: str = '"FP32"') -> bytes:
    return (
        f'{{"inputs": [{{"name": "x", "shape": {shape}, "datatype": {datatype}, "data": {data}}}]}}'
    ).encode()


DEEP = 200  # nested far deeper than any tensor rank, shallow enough to be valid JSON
BODIES = [
    ("not JSON", b"this is not json", "not valid JSON"),
    ("truncated JSON", tensor()[:-7], "not valid JSON"),
    ("empty body", b"", "request body is empty"),
    ("whitespace body", b"   \n", "not valid JSON"),
    ("JSON array", b"[1, 2, 3]", "must be a JSON object, got list"),
    ("JSON string", b'"inputs"', "must be a JSON object, got str"),
    ("inputs missing", b'{"outputs": []}', "inputs: expected a non-empty list"),
    ("inputs an object", b'{"inputs": {"x": [1, 2, 3]}}', "inputs: expected a non-empty list"),
    ("input not an object", b'{"inputs": [[1, 2, 3]]}', "inputs[0]: expected an object"),
    ("name not a string", tensor().replace(b'"x"', b"7"), "inputs[0].name: expected a string"),
    (
        "shape missing",
        b'{"inputs": [{"name": "x", "datatype": "FP32", "data": [1, 2, 3]}]}',
        "shape",
    ),
    ("shape of floats", tensor(shape="[1.0, 3]"), "expected a list of integers"),
    ("shape of strings", tensor(shape='["1", "3"]'), "expected a list of integers"),
    ("shape of booleans", tensor(shape="[true, 3]"), "expected a list of integers"),
    (
        "data missing",
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]}',
        "data: missing",
    ),
    ("data an object", tensor(data='{"a": 1}'), "expected a list of numbers"),
    ("deeply nested arrays (JSON nesting limit)", b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    ("deeply nested data", tensor(data="[" * DEEP + "1" + "]" * DEEP), "expected a regular array"),
    ("huge number (beyond float64)", tensor(data="[1e400, 0, 0]"), "not valid JSON"),
    ("huge number (beyond FP32)", tensor(data="[1e39, 0, 0]"), "overflow FP32"),
    ("huge negative number", tensor(data="[-3.5e38, 0, 0]"), "overflow FP32"),
    ("huge integer", tensor(data="[1" + "0" * 400 + ", 0, 0]"), "not valid JSON"),
    ("strings for numbers", tensor(data='["1", "2", "3"]'), "expected numbers for FP32"),
    ("nulls for numbers", tensor(data="[null, 2, 3]"), "expected numbers for FP32"),
    ("objects for numbers", tensor(data="[{}, 2, 3]"), "expected numbers for FP32"),
    ("NaN token", tensor(data="[NaN, 2, 3]"), "not valid JSON"),
    ("Infinity token", tensor(data="[Infinity, 2, 3]"), "not valid JSON"),
    ("-Infinity token", tensor(data="[-Infinity, 2, 3]"), "not valid JSON"),
    ("ragged nested lists", tensor(shape="[2, 3]", data="[[1, 2, 3], [4, 5]]"), "ragged"),
    ("ragged depth", tensor(shape="[2, 3]", data="[[1, 2, 3], 4]"), "ragged"),
    ("data shorter than shape", tensor(data="[1, 2]"), "needs 3 values, got 2"),
    ("data longer than shape", tensor(data="[1, 2, 3, 4]"), "needs 3 values, got 4"),
    ("shape with too many elements", tensor(shape="[8, 3]"), "needs 24 values, got 3"),
    ("shape of 2**62 samples", tensor(shape=f"[{2**62}, 3]"), "batch size must be between 1 and 8"),
    ("negative batch", tensor(shape="[-1, 3]"), "must be non-negative"),
    ("negative dimension", tensor(shape="[1, -3]"), "must be non-negative"),
    ("zero batch", tensor(shape="[0, 3]", data="[]"), "batch size must be between 1 and 8, got 0"),
    ("zero dimension", tensor(shape="[1, 0]", data="[]"), "dimension 1 must be 3"),
    ("wrong rank", tensor(shape="[3]"), "expected rank 2"),
    ("batch above max_batch_size", tensor(shape="[9, 3]", data=str([0.5] * 27)), "got 9"),
    ("wrong datatype", tensor(datatype='"FP64"'), "expected 'FP32', got 'FP64'"),
    ("datatype not a string", tensor(datatype="32"), "expected 'FP32'"),
    ("unknown input", tensor().replace(b'"x"', b'"image"'), "unknown input 'image'"),
    (
        "input given twice",
        b'{"inputs": [' + tensor()[12:-2] + b", " + tensor()[12:-2] + b"]}",
        "given twice",
    ),
    ("id not a string", tensor()[:-1] + b', "id": 12}', "id: expected a string"),
    ("invalid UTF-8", tensor().replace(b'"x"', b'"\xff"'), "not valid JSON"),
]


@pytest.mark.parametrize(("body", "needle"), [c[1:] for c in BODIES], ids=[c[0] for c in BODIES])
def test_hostile_infer_bodies_are_400(healthy_after, body: bytes, needle: str):
    response = exchange(port_of(healthy_after), request_bytes("POST", INFER, body))
    assert_error(response, 400, needle)


PREDICT_BODIES = [
    ("not JSON", b"{", "not valid JSON"),
    ("instances missing", b"{}", "instances: expected a non-empty list"),
    ("instances a string", b'{"instances": "abc"}', "instances: expected a non-empty list"),
    ("deeply nested", b'{"instances": ' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}", "regular array"),
    ("ragged", b'{"instances": [[1, 2, 3], [1, 2]]}', "ragged"),
    ("mixed objects and lists", b'{"instances": [{"x": [1, 2, 3]}, [1, 2, 3]]}', "instances[1]"),
    ("strings", b'{"instances": [["a", "b", "c"]]}', "expected numbers"),
    ("overflow", b'{"instances": [[1e39, 0, 0]]}', "overflow FP32"),
    ("NaN", b'{"instances": [[NaN, 0, 0]]}', "not valid JSON"),
    ("too many", b'{"instances": ' + str([[0, 0, 0]] * 9).encode() + b"}", "got 9"),
    ("top_k zero", b'{"instances": [[1, 2, 3]], "top_k": 0}', "top_k"),
    ("top_k a string", b'{"instances": [[1, 2, 3]], "top_k": "3"}', "top_k"),
]


@pytest.mark.parametrize(
    ("body", "needle"), [c[1:] for c in PREDICT_BODIES], ids=[c[0] for c in PREDICT_BODIES]
)
def test_hostile_predict_bodies_are_400(healthy_after, body: bytes, needle: str):
    response = exchange(port_of(healthy_after), request_bytes("POST", PREDICT, body))
    assert_error(response, 400, needle)


def test_a_body_at_the_limit_is_read_and_one_byte_more_is_413(healthy_after):
    port = port_of(healthy_after)
    at_limit = tensor()[:-1] + b" " * (MAX_BODY_BYTES - len(tensor())) + b"}"
    assert len(at_limit) == MAX_BODY_BYTES
    assert exchange(port, request_bytes("POST", INFER, at_limit)).status == 200
    over = at_limit[:-1] + b" }"
    assert_error(exchange(port, request_bytes("POST", INFER, over)), 413, "exceeds the limit")
