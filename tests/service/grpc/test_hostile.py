"""Hostile messages against the real server: every one answered with a status, never a crash,
and the server serves normally afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from tests.service.grpc.conftest import MAX_BODY_BYTES, auth

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def channel(grpc_server):
    with grpc.insecure_channel(
        grpc_server.grpc_target, options=[("grpc.max_send_message_length", -1)]
    ) as c:
        yield c


def call(channel: grpc.Channel, payload: bytes) -> grpc.RpcError | triton_pb.ModelInferResponse:
    """Send raw bytes as a ModelInfer request; the error, or the parsed answer."""
    method = channel.unary_unary(INFER, request_serializer=None, response_deserializer=None)
    try:
        return triton_pb.ModelInferResponse.FromString(
            method(payload, metadata=tuple(auth().items()), timeout=10)
        )
    except grpc.RpcError as error:
        return error


def request(shape=(2, 3), raw: list[bytes] | None = None, **fields) -> triton_pb.ModelInferRequest:
    message = triton_pb.ModelInferRequest(model_name="affine", model_version="1", **fields)
    message.inputs.add(name="x", datatype="FP32", shape=shape)
    message.raw_input_contents.extend(
        raw if raw is not None else [np.zeros(shape, np.float32).tobytes()]
    )
    return message


def typed(values: list[float], shape=(2, 3)) -> triton_pb.ModelInferRequest:
    message = triton_pb.ModelInferRequest(model_name="affine")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=shape)
    tensor.contents.fp32_contents.extend(values)
    return message


HOSTILE = {
    "not protobuf": b"\xff\xff\xff\xff garbage",
    "truncated": request().SerializeToString()[:-7],
    "raw bytes short": request(raw=[b"\0" * 23]).SerializeToString(),
    "raw bytes long": request(raw=[b"\0" * 25]).SerializeToString(),
    "raw entries extra": request(raw=[b"\0" * 24, b"\0" * 24]).SerializeToString(),
    "contents short": typed([1.0] * 5).SerializeToString(),
    "contents for a huge shape": typed([1.0] * 6, shape=(2, 2**40)).SerializeToString(),
    "raw for a huge batch": request(shape=(2**40, 3), raw=[b"\0" * 24]).SerializeToString(),
    "negative dimension": request(shape=(2, -3), raw=[b""]).SerializeToString(),
    "rank 40": request(shape=(1,) * 40, raw=[b"\0" * 4]).SerializeToString(),
    "unknown input": triton_pb.ModelInferRequest(
        model_name="affine", inputs=[{"name": "y" * 10_000, "datatype": "FP32", "shape": [1, 3]}]
    ).SerializeToString(),
    "unknown output": request(outputs=[{"name": "\x00\xff"}]).SerializeToString(),
    "unknown model": triton_pb.ModelInferRequest(model_name="../../etc").SerializeToString(),
    "no inputs": triton_pb.ModelInferRequest(model_name="affine").SerializeToString(),
    "bool parameter as timeout": request(
        parameters={"timeout": triton_pb.InferParameter(bool_param=True)}
    ).SerializeToString(),
    "NaN raw": request(raw=[np.full((2, 3), np.nan, np.float32).tobytes()]).SerializeToString(),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_message_gets_a_status(channel, name):
    answer = call(channel, HOSTILE[name])
    assert isinstance(answer, grpc.RpcError), f"{name} was served"
    assert answer.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, (
        answer.code(),
        answer.details(),
    )
    assert answer.details()
    assert len(answer.details()) < 1000, "a client's long name is not echoed whole"


def test_over_the_limit_is_resource_exhausted(channel):
    big = request(shape=(16, 3), raw=[b"\0" * (MAX_BODY_BYTES + 10)]).SerializeToString()
    answer = call(channel, big)
    assert isinstance(answer, grpc.RpcError)
    assert answer.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_server_serves_normally_afterwards(channel, grpc_server):
    for payload in HOSTILE.values():
        call(channel, payload)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    answer = call(channel, request(raw=[x.tobytes()]).SerializeToString())
    assert isinstance(answer, triton_pb.ModelInferResponse), answer
    assert grpc_server.proc.poll() is None
    assert "Traceback" not in grpc_server.log()
