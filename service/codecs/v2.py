"""V2 (Open Inference Protocol) tensors ↔ numpy: JSON and the binary tensor extension.

A request body is a JSON header, optionally followed by raw tensor bytes: the header's length
comes from ``Inference-Header-Content-Length`` and each binary input says how many bytes it
takes (``parameters.binary_data_size``), in input order. Outputs leave as JSON ``data`` or, when
asked for (per output ``binary_data`` or request-level ``binary_data_output``), as raw bytes
after the JSON header, in the order the response lists them.

Decoding is plain functions over the parsed header (orjson, never pydantic models for tensor
data); each failure is a ``BadRequest`` naming the field and what was expected.

Over 300 lines because it is one wire format, decoded and encoded, JSON and binary: splitting
it would spread one set of validation rules over several files.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from normserve.model_repository import TensorSpec, numpy_dtype, parse_ascii_int
from normserve.service.errors import BadRequest
from normserve.service.runtime.loader import LoadedModel

__all__ = [
    "InferRequest",
    "OutputRequest",
    "bytes_payload",
    "check_output_name",
    "check_parameters",
    "check_raw_values",
    "check_shape",
    "classification_view",
    "decode_infer_request",
    "encode_infer_response",
    "json_booleans_possible",
    "parse_json_body",
    "parse_shape",
    "split_body",
    "to_array",
    "top_k_indices",
]

_REQUEST_PARAMETERS = {"binary_data_output", "timeout"}
_UNSUPPORTED_PARAMETERS = {
    "sequence_id": "sequence batching",
    "sequence_start": "sequence batching",
    "sequence_end": "sequence batching",
    "priority": "request priorities",
    "shared_memory_region": "shared memory",
    "shared_memory_byte_size": "shared memory",
    "shared_memory_offset": "shared memory",
}


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """One output to return: as raw bytes or JSON, or as its top ``classification`` classes."""

    name: str
    binary: bool
    classification: int = 0


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded request: model inputs as arrays, outputs to return (in order), request id."""

    inputs: dict[str, np.ndarray]
    outputs: list[OutputRequest]
    id: str | None
    batch_size: int
    timeout_s: float | None = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part that follows it (empty for a JSON-only body)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    length = parse_ascii_int(text)
    if length is None:
        raise BadRequest(
            "Inference-Header-Content-Length must be a non-negative integer of at most 18 "
            f"digits, got {text[:32]!r}"
        )
    if length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN/Infinity tokens are not JSON and are refused (binary
    tensors holding them are refused too: see ``_from_binary``)."""
    if not body:
        raise BadRequest("request body is empty: expected a JSON object with 'inputs'")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(parsed).__name__}")
    return parsed


def json_booleans_possible(text: bytes) -> bool:
    """Whether a JSON text may hold a boolean (a fast byte search; strings may give false
    positives, never false negatives)."""
    return b"true" in text or b"false" in text


def parse_shape(raw: object, field: str) -> tuple[int, ...]:
    """A wire shape: a list of non-negative integers (checked against a spec by check_shape)."""
    if isinstance(raw, list):
        for d in raw:
            if type(d) is not int:  # not bool, not float; a subclass of int is no JSON value
                break
            if d < 0:
                raise BadRequest(f"{field}: dimensions must be non-negative, got {raw}")
        else:
            return tuple(raw)
    raise BadRequest(f"{field}: expected a list of integers, got {str(raw)[:64]}")


def check_shape(shape: tuple[int, ...], spec: TensorSpec, field: str, max_batch: int) -> None:
    if len(shape) != len(spec.shape):
        raise BadRequest(
            f"{field}: expected rank {len(spec.shape)} {_spec_shape(spec)}, got {list(shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want != -1 and got != want:
            raise BadRequest(
                f"{field}: dimension {axis} must be {want} {_spec_shape(spec)}, got {list(shape)}"
            )
    if not 1 <= shape[0] <= max_batch:
        raise BadRequest(f"{field}: batch size must be between 1 and {max_batch}, got {shape[0]}")
    if 0 in shape[1:]:
        raise BadRequest(f"{field}: dimensions must be positive, got {list(shape)}")


def _spec_shape(spec: TensorSpec) -> str:
    """A spec's shape as error messages show it: ``[N, 1, 8, 8]``."""
    return "[" + ", ".join("N" if d == -1 else str(d) for d in spec.shape) + "]"


# JSON values each tensor kind accepts (numpy's kind of the parsed list), and their name.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_WANTED = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
_FLOAT_MAX = {2: float(np.finfo(np.float16).max), 4: float(np.finfo(np.float32).max)}


def to_array(
    data: object,
    spec: TensorSpec,
    shape: tuple[int, ...],
    field: str,
    *,
    booleans_possible: bool = True,
) -> np.ndarray:
    """Flat or nested JSON numbers → an array of ``spec.datatype`` with ``shape``.

    JSON booleans are values only of BOOL tensors: ``true`` is not the number 1.
    ``booleans_possible=False`` says the caller knows that ``data`` holds none (a body without
    the tokens), which skips the scan that a list mixing booleans and numbers needs."""
    if not isinstance(data, list):
        raise BadRequest(f"{field}: expected a list of numbers, got {type(data).__name__}")
    try:
        raw = np.asarray(data)
    except (ValueError, RecursionError):
        raise BadRequest(f"{field}: nested lists are ragged; expected a regular array") from None
    count = math.prod(shape)
    if raw.size != count:
        raise BadRequest(f"{field}: shape {list(shape)} needs {count} values, got {raw.size}")
    dtype = numpy_dtype(spec.datatype)
    wanted = _WANTED[dtype.kind]
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        got = "booleans" if raw.dtype.kind == "b" else f"{raw.dtype.kind!r} data"
        raise BadRequest(f"{field}: expected {wanted} for {spec.datatype}, got {got}")
    if booleans_possible and dtype.kind != "b" and raw.size and _holds_booleans(data, raw):
        raise BadRequest(f"{field}: expected {wanted} for {spec.datatype}, got booleans among them")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequest(f"{field}: values out of range for {spec.datatype}")
    if dtype.kind == "f" and raw.size and dtype.itemsize < raw.dtype.itemsize:
        # JSON numbers are finite float64s (orjson refuses the rest): only a narrower type can
        # overflow, and a value within its largest finite one cannot round to infinity.
        largest = _FLOAT_MAX[dtype.itemsize]
        if raw.max() > largest or raw.min() < -largest:
            raise BadRequest(f"{field}: values overflow {spec.datatype} (finite numbers expected)")
    return raw.astype(dtype).reshape(shape)


def _holds_booleans(data: list[Any], raw: np.ndarray) -> bool:
    """Whether nested ``data`` (already converted to numeric ``raw``) holds a JSON boolean.
    numpy turns ``true`` into 1, so only lists holding a 0 or a 1 are scanned, level by level."""
    if not ((raw == 0) | (raw == 1)).any():
        return False
    level: list[Any] = data
    for _ in range(raw.ndim - 1):
        level = list(itertools.chain.from_iterable(level))
    return bool in set(map(type, level))


def _from_binary(
    binary: memoryview,
    offset: int,
    size: object,
    spec: TensorSpec,
    shape: tuple[int, ...],
    field: str,
) -> np.ndarray:
    """``size`` raw little-endian bytes at ``offset`` → an array (no copy when aligned)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"{field}.parameters.binary_data_size: expected a non-negative integer")
    dtype = numpy_dtype(spec.datatype)
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise BadRequest(
            f"{field}.parameters.binary_data_size: shape {list(shape)} of {spec.datatype} needs "
            f"{expected} bytes, got {size}"
        )
    if offset + size > len(binary):
        raise BadRequest(
            f"{field}: binary data ends at byte {offset + size} of the binary section, which has "
            f"only {len(binary)} bytes"
        )
    array = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
    check_raw_values(array, field)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def check_raw_values(array: np.ndarray, field: str) -> None:
    """Values read from raw bytes: BOOL bytes must be 0 or 1, floats finite (as in JSON)."""
    if array.dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise BadRequest(f"{field}: BOOL bytes must be 0 or 1")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        index = int(np.argmin(np.isfinite(array)))
        raise BadRequest(
            f"{field}: value {index} is {array[index]}; finite numbers expected (NaN and "
            "Infinity are refused, as in JSON)"
        )


def check_parameters(raw: object, field: str) -> dict[str, Any]:
    """A parameters object; features normserve does not serve (sequences, priorities, shared
    memory) are refused by name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{field}: expected an object")
    for key in raw:
        if key in _UNSUPPORTED_PARAMETERS:
            raise BadRequest(f"{field}.{key}: {_UNSUPPORTED_PARAMETERS[key]} is not supported")
    return raw


def _decode_input(
    item: object,
    index: int,
    model: LoadedModel,
    binary: memoryview,
    offset: int,
    booleans_possible: bool,
) -> tuple[str, np.ndarray, int]:
    """One input tensor; returns the new offset into the binary section."""
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
    shape = parse_shape(item.get("shape"), f"{field}.shape")
    check_shape(shape, spec, f"{field}.shape", model.config.max_batch_size)
    parameters = check_parameters(item.get("parameters"), f"{field}.parameters")
    unknown = set(parameters) - {"binary_data_size"}
    if unknown:
        raise BadRequest(
            f"{field}.parameters: unknown {sorted(unknown)[:4]}; only binary_data_size is known"
        )
    if "binary_data_size" in parameters:
        if "data" in item:
            raise BadRequest(f"{field}: give either data or parameters.binary_data_size, not both")
        size = parameters["binary_data_size"]
        array = _from_binary(binary, offset, size, spec, shape, field)
        return name, array, offset + size
    if "data" not in item:
        raise BadRequest(f"{field}.data: missing; expected the tensor's values")
    array = to_array(
        item["data"], spec, shape, f"{field}.data", booleans_possible=booleans_possible
    )
    return name, array, offset


def _flag(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{field}: expected true or false")
    return value


def _requested_outputs(
    raw: object, model: LoadedModel, binary_default: bool
) -> list[OutputRequest]:
    if raw is None or raw == []:  # none named: every output, in the model's order
        return [OutputRequest(spec.name, binary_default) for spec in model.config.outputs]
    if not isinstance(raw, list):
        raise BadRequest('outputs: expected a list of {"name": ...} objects')
    requested: list[OutputRequest] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        field = f"outputs[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise BadRequest(f"{field}.name: expected a string")
        spec = check_output_name(model, name, field, seen)
        parameters = check_parameters(item.get("parameters"), f"{field}.parameters")  # type: ignore[union-attr]
        unknown = set(parameters) - {"binary_data", "classification"}
        if unknown:
            raise BadRequest(
                f"{field}.parameters: unknown {sorted(unknown)[:4]}; "
                "known are binary_data and classification"
            )
        binary = binary_default
        if "binary_data" in parameters:
            binary = _flag(parameters["binary_data"], f"{field}.parameters.binary_data")
        classes = parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise BadRequest(f"{field}.parameters.classification: expected a positive integer")
        if classes and len(spec.shape) != 2:
            raise BadRequest(
                f"{field}.parameters.classification: needs an output of shape [N, classes], "
                f"{name!r} has {list(spec.shape)}"
            )
        requested.append(OutputRequest(name, binary, classes))
    return requested


def check_output_name(model: LoadedModel, name: str, field: str, seen: set[str]) -> TensorSpec:
    """The spec of a requested output: a model output, not requested before (``seen`` grows)."""
    spec = model.output_spec(name)
    if spec is None:
        known = [s.name for s in model.config.outputs]
        raise BadRequest(f"{field}.name: unknown output {name[:64]!r}; model outputs are {known}")
    if name in seen:
        raise BadRequest(f"{field}.name: {name!r} is requested twice")
    seen.add(name)
    return spec


def shared_batch_size(inputs: dict[str, np.ndarray], model: LoadedModel) -> int:
    """The one batch size of every input, after the axes the graph ties together (a sequence
    length shared by ``tokens`` and ``mask``) are checked equal: ``BadRequest`` otherwise."""
    batch_sizes = {a.shape[0] for a in inputs.values()}
    if len(batch_sizes) != 1:
        raise BadRequest(f"inputs: all inputs must share one batch size, got {sorted(batch_sizes)}")
    for group in model.tied_axes:
        sizes = [(name, axis, inputs[name].shape[axis]) for name, axis in group if name in inputs]
        if len({size for _, _, size in sizes}) > 1:
            said = ", ".join(f"{name!r} axis {axis} is {size}" for name, axis, size in sizes)
            raise BadRequest(f"inputs: these axes must have one size (the model ties them): {said}")
    return batch_sizes.pop()


def decode_infer_request(
    header: dict[str, Any],
    model: LoadedModel,
    binary: memoryview | None = None,
    *,
    booleans_possible: bool = True,
) -> InferRequest:
    """Check and convert a parsed V2 infer request (and its binary section) for ``model``;
    ``booleans_possible=False`` when the JSON text holds no ``true``/``false`` token
    (``json_booleans_possible``)."""
    binary = binary if binary is not None else memoryview(b"")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id: expected a string")
    parameters = check_parameters(header.get("parameters"), "parameters")
    unknown = set(parameters) - _REQUEST_PARAMETERS
    if unknown:
        raise BadRequest(
            f"parameters: unknown {sorted(unknown)[:4]}; known are {sorted(_REQUEST_PARAMETERS)}"
        )
    binary_output = _flag(
        parameters.get("binary_data_output", False), "parameters.binary_data_output"
    )
    timeout_s = None
    if "timeout" in parameters:
        timeout = parameters["timeout"]
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise BadRequest("parameters.timeout: expected microseconds as a non-negative integer")
        timeout_s = timeout / 1e6 if timeout else None
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("inputs: expected a non-empty list of input tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(raw_inputs):
        name, array, offset = _decode_input(item, index, model, binary, offset, booleans_possible)
        if name in inputs:
            raise BadRequest(f"inputs[{index}].name: input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise BadRequest(
            f"binary section has {len(binary)} bytes but the inputs' binary_data_size add up "
            f"to {offset}"
        )
    missing = [s.name for s in model.config.inputs if s.name not in inputs]
    if missing:
        raise BadRequest(f"inputs: missing required input(s) {missing}")
    return InferRequest(
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs"), model, binary_output),
        id=request_id,
        batch_size=shared_batch_size(inputs, model),
        timeout_s=timeout_s,
    )


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, C) → (N, min(k, C)) column indices, highest score first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores.astype(np.float64), axis=1, kind="stable")[:, :k]


def classification_view(array: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification view: strings ``"score:index[:label]"``, shape (N, k)."""
    indices = top_k_indices(array, k)
    rows = []
    for row, picks in zip(array, indices, strict=True):
        items = []
        for index in picks:
            text = f"{float(row[index]):f}:{int(index)}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            items.append(text)
        rows.append(items)
    return np.array(rows, dtype=object)


def bytes_payload(array: np.ndarray) -> bytes:
    """BYTES tensors in the binary extension: each element as a 4-byte length, then the bytes."""
    parts = []
    for item in array.ravel():
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def encode_infer_response(
    model: LoadedModel, request: InferRequest, outputs: list[np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length.

    JSON ``data`` goes straight from numpy to orjson, flattened in row-major order.
    """
    body: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request.id is not None:
        body["id"] = request.id
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for wanted, array in zip(request.outputs, outputs, strict=True):
        if wanted.classification:
            array = classification_view(array, wanted.classification, model.config.labels)
            datatype = "BYTES"
        else:
            datatype = model.output_spec(wanted.name).datatype  # type: ignore[union-attr]
        tensor: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if wanted.binary:
            if datatype == "BYTES":
                payload = bytes_payload(array)
            else:
                payload = np.ascontiguousarray(array).tobytes()
            tensor["parameters"] = {"binary_data_size": len(payload)}
            chunks.append(payload)
        elif datatype == "BYTES":
            tensor["data"] = array.ravel().tolist()
        else:
            tensor["data"] = np.ascontiguousarray(array).ravel()
        tensors.append(tensor)
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
