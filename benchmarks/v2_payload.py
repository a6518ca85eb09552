"""Open Inference Protocol (V2) infer requests and responses, JSON and binary, as raw bytes.

The binary form is Triton's binary tensor data extension: a JSON header whose length is sent in
``Inference-Header-Content-Length``, followed by each tensor's raw little-endian bytes; each
binary input carries ``parameters.binary_data_size`` and ``binary_data_output: true`` asks for
binary outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from benchmarks.http_client import HttpResponse, encode_request
from normserve.model_repository import numpy_dtype, v2_datatype

__all__ = [
    "BINARY_EXTENSION",
    "HEADER_LENGTH",
    "binary_body",
    "decode_response",
    "infer_request",
    "json_body",
]

BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"


def _datatype(array: np.ndarray) -> str:
    datatype = v2_datatype(numpy=array.dtype)
    if datatype is None:
        raise ValueError(f"no V2 datatype for numpy {array.dtype}")
    return datatype


def json_body(inputs: dict[str, np.ndarray]) -> bytes:
    """A V2 JSON infer request with flat, row-major data."""
    body = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": _datatype(array),
                "data": np.ascontiguousarray(array).ravel(),
            }
            for name, array in inputs.items()
        ]
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def binary_body(inputs: dict[str, np.ndarray], *, binary_output: bool = True) -> tuple[bytes, int]:
    """``(body, json header length)`` for the binary tensor extension."""
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": _datatype(array),
                "parameters": {"binary_data_size": int(array.nbytes)},
            }
            for name, array in inputs.items()
        ]
    }
    if binary_output:
        header["parameters"] = {"binary_data_output": True}
    head = orjson.dumps(header)
    blobs = [
        np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes() for a in inputs.values()
    ]
    return head + b"".join(blobs), len(head)


def infer_request(
    host: str,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    binary: bool,
    binary_output: bool = True,
) -> bytes:
    """An encoded ``POST /v2/models/{model}/infer``."""
    path = f"/v2/models/{model}/infer"
    if not binary:
        return encode_request(
            "POST",
            path,
            host=host,
            body=json_body(inputs),
            headers={"Content-Type": "application/json"},
        )
    body, header_length = binary_body(inputs, binary_output=binary_output)
    return encode_request(
        "POST",
        path,
        host=host,
        body=body,
        headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: str(header_length)},
    )


def decode_response(response: HttpResponse) -> dict[str, np.ndarray]:
    """Output name → array, from a JSON or a binary V2 infer response."""
    if response.status != 200:
        raise ValueError(f"infer answered {response.status}: {response.body[:200]!r}")
    length_text = response.headers.get(HEADER_LENGTH.lower())
    header_length = int(length_text) if length_text is not None else len(response.body)
    header = orjson.loads(response.body[:header_length])
    offset = header_length
    outputs: dict[str, np.ndarray] = {}
    for item in header["outputs"]:
        dtype = numpy_dtype(item["datatype"]).newbyteorder("<")
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = np.frombuffer(
                response.body, dtype=dtype, count=size // dtype.itemsize, offset=offset
            )
            offset += size
        else:
            data = np.asarray(item["data"], dtype=dtype)
        outputs[item["name"]] = data.reshape(item["shape"])
    return outputs
