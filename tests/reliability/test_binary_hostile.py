"""The binary tensor extension with lying framing, against a real server: 400 with
``{"error"}`` naming the field, never a 5xx, and the server answers correctly afterwards.

Two of these were 500s before (a header length in superscript digits, or longer than Python's
4300-digit ``int`` limit); a binary tensor holding NaN or Infinity was served (now 400, as in
JSON).
"""

from __future__ import annotations

import gzip

import numpy as np
import orjson
import pytest

from tests.reliability.conftest import assert_error, port_of
from tests.reliability.raw_http import exchange, request_bytes

pytestmark = pytest.mark.usefixtures("healthy_after")

INFER = "/v2/models/affine/versions/1/infer"
X = np.array([[1.0, 2.0, 3.0]], np.float32)


def f32(*values: float) -> bytes:
    return np.array([values], np.float32).tobytes()


def header(size: object = 12, shape: object = (1, 3), **extra: object) -> bytes:
    tensor = {"name": "x", "shape": list(shape), "datatype": "FP32"}  # type: ignore[arg-type]
    tensor["parameters"] = {"binary_data_size": size}
    tensor.update(extra)
    return orjson.dumps({"inputs": [tensor]})


def send(server, head: bytes, tail: bytes, length: str | None = "auto", **headers: str):
    extra = dict(headers)
    if length is not None:
        extra["Inference-Header-Content-Length"] = str(len(head)) if length == "auto" else length
    return exchange(port_of(server), request_bytes("POST", INFER, head + tail, extra))


def test_a_well_formed_binary_request_is_served(healthy_after):
    response = send(healthy_after, header(), X.tobytes())
    assert response.status == 200, response.body


CASES = [
    # (name, header, binary section, Inference-Header-Content-Length, error needle)
    ("header length larger than the body", header(), X.tobytes(), "1000", "body has only"),
    ("header length of 40 digits", header(), X.tobytes(), "9" * 40, "at most 18 digits"),
    ("header length of 5000 digits", header(), X.tobytes(), "9" * 5000, "at most 18 digits"),
    ("header length in superscript digits", header(), X.tobytes(), "\u00b2", "at most 18"),
    ("header length negative", header(), X.tobytes(), "-1", "non-negative integer"),
    ("header length not a number", header(), X.tobytes(), "ten", "non-negative integer"),
    ("header length zero", header(), X.tobytes(), "0", "request body is empty"),
    ("header length cutting the JSON", header(), X.tobytes(), "20", "not valid JSON"),
    ("size larger than the bytes sent", header(), X.tobytes()[:8], "auto", "binary data ends"),
    ("size smaller than the bytes sent", header(), X.tobytes() + b"\0" * 4, "auto", "16 bytes"),
    ("size not a multiple of FP32's width", header(11), X.tobytes()[:11], "auto", "got 11"),
    ("size of 13 for 12 bytes of tensor", header(13), X.tobytes() + b"\0", "auto", "got 13"),
    ("size of 2**62", header(2**62), X.tobytes(), "auto", "needs 12 bytes"),
    ("size negative", header(-12), X.tobytes(), "auto", "non-negative integer"),
    ("size a float", header(12.0), X.tobytes(), "auto", "non-negative integer"),
    ("size a string", header("12"), X.tobytes(), "auto", "non-negative integer"),
    ("size a boolean", header(True), X.tobytes(), "auto", "non-negative integer"),
    (
        "binary input with a JSON data field",
        header(data=[1, 2, 3]),
        X.tobytes(),
        "auto",
        "not both",
    ),
    ("binary size without a binary section", header(), b"", None, "binary data ends"),
    ("binary bytes without the header length", header(), X.tobytes(), None, "not valid JSON"),
    ("binary batch above max_batch_size", header(9 * 12, (9, 3)), bytes(108), "auto", "got 9"),
    ("binary shape of 2**40 samples", header(2**40 * 12, (2**40, 3)), b"", "auto", "batch size"),
    ("NaN in a binary tensor", header(), np.float32([[np.nan, 1, 2]]).tobytes(), "auto", "NaN"),
    (
        "Infinity in a binary tensor",
        header(),
        np.float32([[1, np.inf, 2]]).tobytes(),
        "auto",
        "inf",
    ),
    (
        "-Infinity in a binary tensor",
        header(),
        np.float32([[1, 2, -np.inf]]).tobytes(),
        "auto",
        "value 2",
    ),
]


@pytest.mark.parametrize(
    ("head", "tail", "length", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_lying_binary_framing_is_400(healthy_after, head, tail, length, needle):
    assert_error(send(healthy_after, head, tail, length), 400, needle)


def test_lying_framing_inside_a_gzip_body_is_400_too(healthy_after):
    """Framing is checked after inflating: the header length counts inflated bytes."""
    head, tail = header(), X.tobytes()
    body = gzip.compress(head + tail)
    response = exchange(
        port_of(healthy_after),
        request_bytes(
            "POST",
            INFER,
            body,
            {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(body) + 1)},
        ),
    )
    assert_error(response, 400, f"body has only {len(head) + len(tail)} bytes")
