"""The V2 codec: the binary extension, parameters, classification."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from normserve.model_repository import TensorSpec, scan_repository
from normserve.service.codecs.v2 import (
    decode_infer_request,
    encode_infer_response,
    split_body,
    to_array,
)
from normserve.service.errors import BadRequest
from normserve.service.runtime.loader import LoadedModel, load_model
from normserve.service.settings import Settings
from tests.service.fake_models import write_entry


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("codec") / "repo"
    write_entry(root, "affine", 1)
    (entry,) = scan_repository(root)
    return load_model(entry, Settings(provider="cpu"), ["CPUExecutionProvider"])


def binary_request(x: np.ndarray, **extra: object) -> tuple[bytes, str]:
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        **extra,
    }
    raw = orjson.dumps(header)
    return raw + x.tobytes(), str(len(raw))


def decode(body: bytes, header_length: str | None, model: LoadedModel):
    header, binary = split_body(body, header_length)
    return decode_infer_request(orjson.loads(header), model, binary)


def test_binary_input_is_read_without_json_and_matches_the_bytes(model):
    x = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    body, length = binary_request(x, id="b-1")
    request = decode(body, length, model)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.id == "b-1"
    assert request.batch_size == 3


def test_unaligned_binary_input_still_decodes(model):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 24},
                }
            ],
            "id": "odd",  # header length not a multiple of 4
        }
    )
    if len(header) % 4 == 0:
        header += b" "
    request = decode(header + x.tobytes(), str(len(header)), model)
    assert request.inputs["x"].flags.aligned
    np.testing.assert_array_equal(request.inputs["x"], x)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda b, n: (b, "abc"), "Inference-Header-Content-Length must be a non-negative"),
        (lambda b, n: (b, str(len(b) + 1)), "but the body has only"),
        (lambda b, n: (b[:-4], n), "binary data ends at byte 36"),
        (lambda b, n: (b + b"\0\0\0\0", n), "binary section has 40 bytes"),
    ],
)
def test_binary_framing_errors_are_400(model, mutate, needle):
    body, length = binary_request(np.zeros((3, 3), np.float32))
    body, length = mutate(body, length)
    with pytest.raises(BadRequest, match=needle):
        decode(body, length, model)


def test_binary_size_must_match_the_shape(model):
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 20},
                }
            ]
        }
    )
    with pytest.raises(BadRequest, match=r"needs 24 bytes, got 20"):
        decode(header + bytes(20), str(len(header)), model)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"parameters": {"sequence_id": 3}}, "sequence batching is not supported"),
        ({"parameters": {"priority": 1}}, "request priorities is not supported"),
        ({"parameters": {"colour": "red"}}, "unknown ['colour']"),
        ({"parameters": {"binary_data_output": "yes"}}, "expected true or false"),
        ({"parameters": {"timeout": -1}}, "microseconds"),
        ({"parameters": []}, "parameters: expected an object"),
        ({"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "expected true or"),
        ({"outputs": [{"name": "y", "parameters": {"classification": -2}}]}, "positive"),
        ({"outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]}, "shared"),
    ],
)
def test_unsupported_or_malformed_parameters_are_400(model, extra, needle):
    body, length = binary_request(np.zeros((1, 3), np.float32), **extra)
    with pytest.raises(BadRequest) as error:
        decode(body, length, model)
    assert needle in error.value.message


def test_timeout_parameter_is_microseconds(model):
    body, length = binary_request(np.zeros((1, 3), np.float32), parameters={"timeout": 250_000})
    assert decode(body, length, model).timeout_s == pytest.approx(0.25)


def read_binary_response(body: bytes, header_length: int) -> tuple[dict, dict[str, bytes]]:
    header = orjson.loads(body[:header_length])
    offset, raw = header_length, {}
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            raw[out["name"]] = body[offset : offset + size]
            offset += size
    assert offset == len(body)
    return header, raw


def test_binary_outputs_follow_the_header_in_the_order_asked(model):
    x = np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32)
    body, length = binary_request(
        x,
        id="r",
        outputs=[{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}],
    )
    request = decode(body, length, model)
    outputs = model.run(request.inputs, request.output_names)
    payload, header_length = encode_infer_response(model, request, outputs)
    assert header_length is not None
    header, raw = read_binary_response(payload, header_length)
    assert header["id"] == "r"
    assert [o["name"] for o in header["outputs"]] == ["z", "y"]
    z = np.frombuffer(raw["z"], dtype=np.float32).reshape(header["outputs"][0]["shape"])
    np.testing.assert_array_equal(z, outputs[0])
    np.testing.assert_array_equal(
        np.array(header["outputs"][1]["data"], dtype=np.float32).reshape(2, 2), outputs[1]
    )


def test_binary_data_output_makes_every_output_binary_unless_one_says_otherwise(model):
    body, length = binary_request(
        np.ones((1, 3), np.float32),
        parameters={"binary_data_output": True},
        outputs=[{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
    )
    request = decode(body, length, model)
    assert [(o.name, o.binary) for o in request.outputs] == [("y", True), ("z", False)]
    body, length = binary_request(
        np.ones((1, 3), np.float32), parameters={"binary_data_output": True}
    )
    assert all(o.binary for o in decode(body, length, model).outputs)


def test_classification_returns_top_classes_with_labels(model):
    x = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)  # y = [1.1, -2.2], [-1.4, 2.8]
    for binary in (False, True):
        body, length = binary_request(
            x,
            outputs=[{"name": "y", "parameters": {"classification": 1, "binary_data": binary}}],
        )
        request = decode(body, length, model)
        payload, header_length = encode_infer_response(
            model, request, model.run(request.inputs, ["y"])
        )
        if binary:
            header, raw = read_binary_response(payload, header_length)
            blob, items = raw["y"], []
            while blob:
                (n,) = struct.unpack("<I", blob[:4])
                items.append(blob[4 : 4 + n].decode())
                blob = blob[4 + n :]
        else:
            header = orjson.loads(payload)
            items = header["outputs"][0]["data"]
        assert header["outputs"][0]["datatype"] == "BYTES"
        assert header["outputs"][0]["shape"] == [2, 1]
        assert items == ["1.100000:0:left", "2.800000:1:right"]


# -- content codings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value", "fits"),
    [
        ("FP16", 65504.0, True),  # float16's largest finite value
        ("FP16", -65504, True),
        ("FP16", 65520.0, False),  # would round to infinity
        ("FP16", -70000, False),  # an integer too
        ("FP32", 3.4e38, True),
        ("FP32", -3.5e38, False),
        ("FP64", 1.7e308, True),
    ],
)
def test_a_json_number_beyond_a_float_type_is_refused_not_made_infinite(
    datatype: str, value: float, fits: bool
):
    spec = TensorSpec(name="x", datatype=datatype, shape=(-1, 2))
    data = [1.5, value]
    if fits:
        array = to_array(data, spec, (1, 2), "inputs[0].data")
        assert np.isfinite(array).all()
        assert array[0, 1] == np.array(value, dtype=array.dtype)
    else:
        with pytest.raises(BadRequest, match=f"inputs\\[0\\].data: values overflow {datatype}"):
            to_array(data, spec, (1, 2), "inputs[0].data")
