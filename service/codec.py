"""V2 (Open Inference Protocol) JSON tensors ↔ numpy, with every check a client can fail.

Decoding is plain functions over the parsed body (orjson, never pydantic models for tensor
data); each failure is a ``BadRequest`` naming the field and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.datatypes import to_numpy_dtype
from service.errors import BadRequest
from service.model import LoadedModel
from service.repository import TensorSpec

__all__ = ["InferRequest", "decode_infer_request", "encode_infer_response", "parse_json_body"]


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: model inputs as arrays, outputs to return (in order), request id."""

    inputs: dict[str, np.ndarray]
    outputs: list[str]
    id: str | None
    batch_size: int


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN/Infinity tokens are not JSON and are refused."""
    if not body:
        raise BadRequest("request body is empty: expected a JSON object with 'inputs'")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _shape(raw: object, field: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in raw
    ):
        raise BadRequest(f"{field}: expected a list of integers, got {str(raw)[:64]}")
    if any(d < 0 for d in raw):
        raise BadRequest(f"{field}: dimensions must be non-negative, got {raw}")
    return tuple(raw)


def _check_shape(shape: tuple[int, ...], spec: TensorSpec, field: str, max_batch: int) -> None:
    expected = "[" + ", ".join("N" if d == -1 else str(d) for d in spec.shape) + "]"
    if len(shape) != len(spec.shape):
        raise BadRequest(f"{field}: expected rank {len(spec.shape)} {expected}, got {list(shape)}")
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want != -1 and got != want:
            raise BadRequest(
                f"{field}: dimension {axis} must be {want} {expected}, got {list(shape)}"
            )
    if not 1 <= shape[0] <= max_batch:
        raise BadRequest(f"{field}: batch size must be between 1 and {max_batch}, got {shape[0]}")


def _to_array(data: object, spec: TensorSpec, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Flat or nested JSON numbers → an array of ``spec.datatype`` with ``shape``."""
    if not isinstance(data, list):
        raise BadRequest(f"{field}: expected a list of numbers, got {type(data).__name__}")
    try:
        raw = np.asarray(data)
    except (ValueError, RecursionError):
        raise BadRequest(f"{field}: nested lists are ragged; expected a regular array") from None
    count = math.prod(shape)
    if raw.size != count:
        raise BadRequest(f"{field}: shape {list(shape)} needs {count} values, got {raw.size}")
    dtype = to_numpy_dtype(spec.datatype)
    kinds = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[dtype.kind]
    if raw.size and raw.dtype.kind not in kinds:
        wanted = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}[dtype.kind]
        raise BadRequest(
            f"{field}: expected {wanted} for {spec.datatype}, got {raw.dtype.kind!r} data"
        )
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequest(f"{field}: values out of range for {spec.datatype}")
    if dtype.kind == "f" and raw.size:
        with np.errstate(over="ignore"):
            cast = raw.astype(dtype)
        if not np.isfinite(cast).all():
            raise BadRequest(f"{field}: values overflow {spec.datatype} (finite numbers expected)")
        return cast.reshape(shape)
    return raw.astype(dtype).reshape(shape)


def _decode_input(item: object, index: int, model: LoadedModel) -> tuple[str, np.ndarray]:
    field = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise BadRequest(f"{field}: expected an object with name, shape, datatype and data")
    name = item.get("name")
    if not isinstance(name, str):
        raise BadRequest(f"{field}.name: expected a string")
    spec = model.input_spec(name)
    if spec is None:
        known = [s.name for s in model.config.inputs]
        raise BadRequest(f"{field}.name: unknown input {name[:64]!r}; model inputs are {known}")
    field = f"inputs[{index}] ({name})"
    datatype = item.get("datatype")
    if datatype != spec.datatype:
        raise BadRequest(
            f"{field}.datatype: expected {spec.datatype!r}, got {str(datatype)[:32]!r}"
        )
    shape = _shape(item.get("shape"), f"{field}.shape")
    _check_shape(shape, spec, f"{field}.shape", model.config.max_batch_size)
    if "data" not in item:
        raise BadRequest(f"{field}.data: missing; expected the tensor's values")
    return name, _to_array(item["data"], spec, shape, f"{field}.data")


def _requested_outputs(raw: object, model: LoadedModel) -> list[str]:
    if raw is None:
        return [spec.name for spec in model.config.outputs]
    if not isinstance(raw, list):
        raise BadRequest('outputs: expected a list of {"name": ...} objects')
    names = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise BadRequest(f"outputs[{index}].name: expected a string")
        if model.output_spec(name) is None:
            known = [s.name for s in model.config.outputs]
            raise BadRequest(
                f"outputs[{index}].name: unknown output {name[:64]!r}; model outputs are {known}"
            )
        if name in names:
            raise BadRequest(f"outputs[{index}].name: {name!r} is requested twice")
        names.append(name)
    return names


def decode_infer_request(body: dict[str, Any], model: LoadedModel) -> InferRequest:
    """Check and convert a parsed V2 infer request for ``model``."""
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id: expected a string")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("inputs: expected a non-empty list of input tensors")
    inputs: dict[str, np.ndarray] = {}
    for index, item in enumerate(raw_inputs):
        name, array = _decode_input(item, index, model)
        if name in inputs:
            raise BadRequest(f"inputs[{index}].name: input {name!r} is given twice")
        inputs[name] = array
    missing = [s.name for s in model.config.inputs if s.name not in inputs]
    if missing:
        raise BadRequest(f"inputs: missing required input(s) {missing}")
    batch_sizes = {a.shape[0] for a in inputs.values()}
    if len(batch_sizes) != 1:
        raise BadRequest(f"inputs: all inputs must share one batch size, got {sorted(batch_sizes)}")
    return InferRequest(
        inputs=inputs,
        outputs=_requested_outputs(body.get("outputs"), model),
        id=request_id,
        batch_size=batch_sizes.pop(),
    )


def encode_infer_response(
    model: LoadedModel, request: InferRequest, outputs: list[np.ndarray]
) -> bytes:
    """The V2 JSON response; arrays go straight to orjson, flattened in row-major order."""
    body: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = [
        {
            "name": name,
            "datatype": model.output_spec(name).datatype,  # type: ignore[union-attr]
            "shape": list(array.shape),
            "data": np.ascontiguousarray(array).ravel(),
        }
        for name, array in zip(request.outputs, outputs, strict=True)
    ]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
