"""The gRPC tensor codec in-process: values both ways against independent references, and the
same message as the V2 JSON codec for every mistake the two protocols share."""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton_pb  # an independent parser of the wire

from normserve.service.codecs import inference_pb2 as pb
from normserve.service.codecs.grpc import (
    CONTENTS_FIELD,
    decode_infer_request,
    encode_infer_response,
)
from normserve.service.codecs.v2 import decode_infer_request as decode_v2
from normserve.service.errors import BadRequest
from normserve.service.runtime.loader import LoadedModel
from tests.service.fake_models import affine_reference
from tests.service.grpc.models import pair_reference


@pytest.fixture
def pair(runtime) -> LoadedModel:
    return runtime.store.get("pair").model


@pytest.fixture
def affine(runtime) -> LoadedModel:
    return runtime.store.get("affine", "1").model


def random_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((n, 3)) * 10.0 ** rng.integers(-3, 4, (n, 3))).astype(np.float32)
    b = rng.integers(-(2**31), 2**31 - 1, (n, 3), dtype=np.int64).astype(np.int32)
    return a, b


def raw_request(**arrays: np.ndarray) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="pair")
    for name, array in arrays.items():
        datatype = {"float32": "FP32", "int32": "INT32"}[array.dtype.name]
        message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_input_contents.append(array.tobytes())
    return message


def typed_request(**arrays: np.ndarray) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="pair")
    for name, array in arrays.items():
        datatype = {"float32": "FP32", "int32": "INT32"}[array.dtype.name]
        tensor = message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return message


@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("build", [raw_request, typed_request], ids=["raw", "typed"])
def test_inputs_decode_to_the_exact_values(pair, n, build):
    a, b = random_pair(n, seed=n)
    request = decode_infer_request(build(a=a, b=b), pair)
    assert request.batch_size == n
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], b)
    assert request.inputs["a"].dtype == np.float32
    assert request.inputs["b"].dtype == np.int32


@pytest.mark.parametrize("n", [1, 3, 16])
def test_outputs_read_back_by_tritonclients_own_messages(pair, n):
    a, b = random_pair(n, seed=100 + n)
    message = raw_request(a=a, b=b)
    message.id = f"request-{n}"
    message.outputs.add(name="product")
    message.outputs.add(name="sum")
    request = decode_infer_request(message, pair)
    outputs = pair.run(request.inputs, request.output_names)
    body, header_length = encode_infer_response(pair, request, outputs)
    assert header_length is None
    response = triton_pb.ModelInferResponse.FromString(body)
    assert (response.model_name, response.model_version, response.id) == ("pair", "1", message.id)
    assert [o.name for o in response.outputs] == ["product", "sum"]
    expected_sum, expected_product = pair_reference(a, b)
    for tensor, raw, expected in zip(
        response.outputs,
        response.raw_output_contents,
        (expected_product, expected_sum),
        strict=True,
    ):
        assert tensor.datatype == "FP32"
        assert list(tensor.shape) == [n, 3]
        got = np.frombuffer(raw, dtype=np.float32).reshape(n, 3)
        # float32 arithmetic on float32 inputs: one rounding of the exact float64 result.
        np.testing.assert_allclose(got, expected, rtol=2e-7, atol=0)


def test_classification_leaves_as_bytes_strings(affine):
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -2.0]], dtype=np.float32)
    message = pb.ModelInferRequest(model_name="affine")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    output = message.outputs.add(name="y")
    output.parameters["classification"].int64_param = 1
    request = decode_infer_request(message, affine)
    body, _ = encode_infer_response(affine, request, affine.run(request.inputs, ["y"]))
    response = triton_pb.ModelInferResponse.FromString(body)
    (tensor,) = response.outputs
    assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [2, 1])
    y, _ = affine_reference(x)
    raw = response.raw_output_contents[0]
    texts = []
    while raw:
        length = int.from_bytes(raw[:4], "little")
        texts.append(raw[4 : 4 + length].decode())
        raw = raw[4 + length :]
    for row, text in zip(y, texts, strict=True):
        score, index, label = text.split(":")
        assert int(index) == int(np.argmax(row))
        assert float(score) == pytest.approx(row.max(), rel=1e-5)
        assert label == ["left", "right"][int(index)]


# -- the same mistake, the same message ------------------------------------------------------

A = {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [0.5] * 6}
B = {"name": "b", "datatype": "INT32", "shape": [2, 3], "data": [1] * 6}


def changed(item: dict, **fields: object) -> dict:
    return {**copy.deepcopy(item), **fields}


CASES = {
    "unknown input": [changed(A, name="c"), B],
    "wrong datatype": [changed(A, datatype="FP64"), B],
    "wrong rank": [changed(A, shape=[6]), B],
    "wrong dimension": [changed(A, shape=[2, 4], data=[0.5] * 8), B],
    "batch over the maximum": [changed(A, shape=[17, 3], data=[0.5] * 51), B],
    "zero batch": [changed(A, shape=[0, 3], data=[]), B],
    "negative dimension": [changed(A, shape=[2, -3]), B],
    "missing input": [A],
    "input twice": [A, A, B],
    "batch sizes differ": [A, changed(B, shape=[1, 3], data=[1] * 3)],
    "no inputs": [],
    "unsupported input parameter": [changed(A, parameters={"shared_memory_region": "r"}), B],
}
OUTPUT_CASES = {
    "unknown output": [{"name": "difference"}],
    "output twice": [{"name": "sum"}, {"name": "sum"}],
    "negative classification": [{"name": "sum", "parameters": {"classification": -1}}],
}
PARAMETER_CASES = {
    "unsupported request parameter": {"priority": 1},
    "negative timeout": {"timeout": -5},
}


def as_grpc(
    inputs: list[dict], outputs: list[dict] | None, parameters: dict
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="pair")
    for item in inputs:
        tensor = message.inputs.add(
            name=item["name"], datatype=item["datatype"], shape=item["shape"]
        )
        floats = any(isinstance(v, float) for v in item["data"])
        field = "fp32_contents" if floats else "int_contents"
        getattr(tensor.contents, field).extend(item["data"])
        for key, value in item.get("parameters", {}).items():
            tensor.parameters[key].string_param = value
    for item in outputs or []:
        output = message.outputs.add(name=item["name"])
        for key, value in item.get("parameters", {}).items():
            output.parameters[key].int64_param = value
    for key, value in parameters.items():
        message.parameters[key].int64_param = value
    return message


def both_messages(
    model: LoadedModel, inputs: list[dict], outputs: list[dict] | None = None, parameters=None
) -> tuple[str, str]:
    parameters = parameters or {}
    header: dict = {"inputs": inputs, "parameters": parameters}
    if outputs is not None:
        header["outputs"] = outputs
    with pytest.raises(BadRequest) as over_http:
        decode_v2(header, model)
    with pytest.raises(BadRequest) as over_grpc:
        decode_infer_request(as_grpc(inputs, outputs, parameters), model)
    return over_http.value.message, over_grpc.value.message


@pytest.mark.parametrize("case", CASES)
def test_input_mistakes_get_the_http_message(pair, case):
    over_http, over_grpc = both_messages(pair, CASES[case])
    assert over_grpc == over_http


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_output_mistakes_get_the_http_message(pair, case):
    over_http, over_grpc = both_messages(pair, [A, B], OUTPUT_CASES[case])
    assert over_grpc == over_http


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_parameter_mistakes_get_the_http_message(pair, case):
    over_http, over_grpc = both_messages(pair, [A, B], None, PARAMETER_CASES[case])
    assert over_grpc == over_http


def test_value_count_mistakes_name_the_contents_field(pair):
    over_http, over_grpc = both_messages(pair, [changed(A, data=[0.5] * 5), B])
    assert over_http == "inputs[0] (a).data: shape [2, 3] needs 6 values, got 5"
    assert over_grpc == "inputs[0] (a).contents.fp32_contents: shape [2, 3] needs 6 values, got 5"


# -- gRPC's own fields -----------------------------------------------------------------------


def refused(model: LoadedModel, message: pb.ModelInferRequest) -> str:
    with pytest.raises(BadRequest) as error:
        decode_infer_request(message, model)
    return error.value.message


def test_raw_contents_are_checked_entry_by_entry(pair):
    a, b = random_pair(2, seed=7)
    short = raw_request(a=a, b=b)
    short.raw_input_contents[1] = b.tobytes()[:-1]
    assert refused(pair, short) == (
        "raw_input_contents[1] (b): shape [2, 3] of INT32 needs 24 bytes, got 23"
    )
    missing = raw_request(a=a, b=b)
    del missing.raw_input_contents[1]
    assert refused(pair, missing).startswith("raw_input_contents: 1 entries for 2 inputs")
    both = raw_request(a=a, b=b)
    both.inputs[0].contents.fp32_contents.extend(a.ravel().tolist())
    assert "give either contents or raw_input_contents" in refused(pair, both)
    nan = a.copy()
    nan[1, 2] = np.nan
    assert "value 5 is nan; finite numbers expected" in refused(pair, raw_request(a=nan, b=b))


def test_typed_contents_must_be_in_the_datatypes_field(pair):
    a, b = random_pair(2, seed=8)
    message = typed_request(a=a, b=b)
    message.inputs[0].contents.ClearField("fp32_contents")
    message.inputs[0].contents.fp64_contents.extend(a.astype(np.float64).ravel().tolist())
    assert refused(pair, message) == (
        "inputs[0] (a).contents: FP32 values go in fp32_contents, got ['fp64_contents']"
    )
    message.inputs[0].contents.ClearField("fp64_contents")
    assert refused(pair, message).startswith("inputs[0] (a).contents.fp32_contents: missing")
    infinite = typed_request(a=np.full((2, 3), np.inf, np.float32), b=b)
    assert "finite numbers expected" in refused(pair, infinite)


@pytest.mark.parametrize("build", [raw_request, typed_request], ids=["raw", "typed"])
def test_a_huge_declared_shape_is_refused_without_allocating(pair, build):
    a, b = random_pair(1, seed=9)
    message = build(a=a, b=b)
    message.inputs[0].shape[:] = [1, 2**40]
    assert "dimension 1 must be 3" in refused(pair, message)
    # A model with a dynamic second axis is the real risk: the size check catches it before
    # anything the size of the declared shape is made.
    spec = dataclasses.replace(pair.config.inputs[0], shape=(-1, -1))
    config = dataclasses.replace(pair.config, inputs=(spec, pair.config.inputs[1]))
    dynamic = dataclasses.replace(pair, config=config)
    start = time.perf_counter()
    text = refused(dynamic, message)
    assert time.perf_counter() - start < 0.5
    assert f"needs {2**40 * (4 if build is raw_request else 1)}" in text
