"""V2 tensors over gRPC ↔ numpy: a ``ModelInferRequest`` in, ``ModelInferResponse`` bytes out.

Inputs come as typed ``contents`` (the one field that matches the datatype; FP16 has none) or,
for every input at once, as ``raw_input_contents`` (one entry per input, in input order, like
Triton). Outputs always leave as ``raw_output_contents``, which is what Triton sends and what
``tritonclient.grpc`` reads.

The checks are the V2 codec's own functions (``parse_shape``, ``check_shape``, ``to_array``,
``check_parameters``, ``check_raw_values``), so a wrong name, datatype, shape or value gets the
same message over gRPC as over HTTP; only gRPC's own fields (``contents``,
``raw_input_contents``, typed parameters) have messages of their own. Every size is checked
before anything is allocated, so a huge declared shape costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from normserve.model_repository import TensorSpec, numpy_dtype
from normserve.service.codecs import inference_pb2 as pb
from normserve.service.codecs.v2 import (
    InferRequest,
    OutputRequest,
    bytes_payload,
    check_output_name,
    check_parameters,
    check_raw_values,
    check_shape,
    classification_view,
    parse_shape,
    shared_batch_size,
    to_array,
)
from normserve.service.errors import BadRequest
from normserve.service.runtime.loader import LoadedModel

__all__ = ["CONTENTS_FIELD", "decode_infer_request", "encode_infer_response", "parameter_values"]

# The typed-contents field each V2 datatype travels in (the protocol's rule); FP16 has none.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_REQUEST_PARAMETERS = {"timeout"}


def parameter_values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    """A protobuf parameter map as plain values (what the V2 JSON checks take)."""
    values: dict[str, object] = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = None if which is None else getattr(parameter, which)
    return values


def _from_raw(raw: bytes, spec: TensorSpec, shape: tuple[int, ...], field: str) -> np.ndarray:
    dtype = numpy_dtype(spec.datatype)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"{field}: shape {list(shape)} of {spec.datatype} needs {expected} bytes, "
            f"got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype)
    check_raw_values(array, field)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def _from_contents(
    contents: pb.InferTensorContents, spec: TensorSpec, shape: tuple[int, ...], field: str
) -> np.ndarray:
    filled = [descriptor.name for descriptor, _ in contents.ListFields()]
    wanted = CONTENTS_FIELD.get(spec.datatype)
    if wanted is None:
        raise BadRequest(
            f"{field}.contents: {spec.datatype} has no typed contents field; send the tensor in "
            "raw_input_contents"
        )
    others = [name for name in filled if name != wanted]
    if others:
        raise BadRequest(f"{field}.contents: {spec.datatype} values go in {wanted}, got {others}")
    if not filled:
        raise BadRequest(
            f"{field}.contents.{wanted}: missing; expected the tensor's values (or every input "
            "in raw_input_contents)"
        )
    values = getattr(contents, wanted)
    count = math.prod(shape)
    if len(values) != count:  # before copying them out: a huge shape allocates nothing
        raise BadRequest(
            f"{field}.contents.{wanted}: shape {list(shape)} needs {count} values, "
            f"got {len(values)}"
        )
    array = to_array(list(values), spec, shape, f"{field}.contents.{wanted}")
    check_raw_values(array, f"{field}.contents.{wanted}")  # protobuf floats may be NaN
    return array


def _decode_input(
    tensor: pb.ModelInferRequest.InferInputTensor,
    index: int,
    model: LoadedModel,
    raw: bytes | None,
) -> tuple[str, np.ndarray]:
    field = f"inputs[{index}]"
    name = tensor.name
    spec = model.input_spec(name)
    if spec is None:
        known = [s.name for s in model.config.inputs]
        raise BadRequest(f"{field}.name: unknown input {name[:64]!r}; model inputs are {known}")
    field = f"inputs[{index}] ({name})"
    if tensor.datatype != spec.datatype:
        raise BadRequest(
            f"{field}.datatype: expected {spec.datatype!r}, got {tensor.datatype[:32]!r}"
        )
    shape = parse_shape(list(tensor.shape), f"{field}.shape")
    check_shape(shape, spec, f"{field}.shape", model.config.max_batch_size)
    parameters = check_parameters(parameter_values(tensor.parameters), f"{field}.parameters")
    if parameters:
        raise BadRequest(
            f"{field}.parameters: unknown {sorted(parameters)[:4]}; inputs take no parameters"
        )
    if raw is None:
        return name, _from_contents(tensor.contents, spec, shape, field)
    if tensor.contents.ListFields():
        raise BadRequest(f"{field}.contents: give either contents or raw_input_contents, not both")
    return name, _from_raw(raw, spec, shape, f"raw_input_contents[{index}] ({name})")


def _requested_outputs(
    outputs: list[pb.ModelInferRequest.InferRequestedOutputTensor], model: LoadedModel
) -> list[OutputRequest]:
    if not outputs:  # none named: every output, in the model's order
        return [OutputRequest(spec.name, binary=True) for spec in model.config.outputs]
    requested: list[OutputRequest] = []
    seen: set[str] = set()
    for index, item in enumerate(outputs):
        field = f"outputs[{index}]"
        name = item.name
        spec = check_output_name(model, name, field, seen)
        parameters = check_parameters(parameter_values(item.parameters), f"{field}.parameters")
        unknown = set(parameters) - {"classification"}
        if unknown:
            raise BadRequest(
                f"{field}.parameters: unknown {sorted(unknown)[:4]}; known is classification"
            )
        classes = parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise BadRequest(f"{field}.parameters.classification: expected a positive integer")
        if classes and len(spec.shape) != 2:
            raise BadRequest(
                f"{field}.parameters.classification: needs an output of shape [N, classes], "
                f"{name!r} has {list(spec.shape)}"
            )
        requested.append(OutputRequest(name, binary=True, classification=classes))
    return requested


def _timeout_s(message: pb.ModelInferRequest) -> float | None:
    parameters = check_parameters(parameter_values(message.parameters), "parameters")
    unknown = set(parameters) - _REQUEST_PARAMETERS
    if unknown:
        raise BadRequest(
            f"parameters: unknown {sorted(unknown)[:4]}; known are {sorted(_REQUEST_PARAMETERS)}"
        )
    if "timeout" not in parameters:
        return None
    timeout = parameters["timeout"]
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise BadRequest("parameters.timeout: expected microseconds as a non-negative integer")
    return timeout / 1e6 if timeout else None


def decode_infer_request(message: pb.ModelInferRequest, model: LoadedModel) -> InferRequest:
    """Check and convert a ``ModelInferRequest`` for ``model``; ``BadRequest`` naming the field."""
    timeout_s = _timeout_s(message)
    if not message.inputs:
        raise BadRequest("inputs: expected a non-empty list of input tensors")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents: {len(raw)} entries for {len(message.inputs)} inputs; expected "
            "one per input, in input order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name, array = _decode_input(tensor, index, model, raw[index] if raw else None)
        if name in inputs:
            raise BadRequest(f"inputs[{index}].name: input {name!r} is given twice")
        inputs[name] = array
    missing = [s.name for s in model.config.inputs if s.name not in inputs]
    if missing:
        raise BadRequest(f"inputs: missing required input(s) {missing}")
    return InferRequest(
        inputs=inputs,
        outputs=_requested_outputs(list(message.outputs), model),
        id=message.id or None,
        batch_size=shared_batch_size(inputs, model),
        timeout_s=timeout_s,
    )


def encode_infer_response(
    model: LoadedModel, request: InferRequest, outputs: list[np.ndarray]
) -> tuple[bytes, None]:
    """A serialized ``ModelInferResponse``: every output as raw little-endian bytes (a
    classification as BYTES strings ``"score:index[:label]"``)."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version))
    if request.id is not None:
        response.id = request.id
    for wanted, array in zip(request.outputs, outputs, strict=True):
        if wanted.classification:
            array = classification_view(array, wanted.classification, model.config.labels)
            datatype, payload = "BYTES", bytes_payload(array)
        else:
            datatype = model.output_spec(wanted.name).datatype  # type: ignore[union-attr]
            payload = np.ascontiguousarray(array).tobytes()
        response.outputs.add(name=wanted.name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(payload)
    return response.SerializeToString(), None
