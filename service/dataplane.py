"""What the routes do, with no HTTP in sight: metadata views, inference, statistics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson

from normserve import __version__
from normserve.model_repository import DATATYPES
from normserve.service.codecs import grpc as grpc_codec
from normserve.service.codecs import inference_pb2 as pb
from normserve.service.codecs.offload import OFFLOAD_BYTES, JsonOffload, json_part
from normserve.service.codecs.v1 import PredictRequest, decode_predict_request, encode_predictions
from normserve.service.codecs.v2 import (
    InferRequest,
    decode_infer_request,
    encode_infer_response,
    json_booleans_possible,
    parse_json_body,
    split_body,
)
from normserve.service.errors import ServeError
from normserve.service.runtime.batcher import BatchResult
from normserve.service.runtime.loader import LoadedModel
from normserve.service.runtime.servable import Servable, batch_policy
from normserve.service.runtime.store import ModelStore
from normserve.service.settings import Settings
from normserve.service.telemetry.tracing import RequestSpan

__all__ = [
    "InferOutcome",
    "infer",
    "infer_grpc",
    "model_config",
    "model_metadata",
    "model_stats",
    "predict",
    "run",
    "server_metadata",
]

EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]


@dataclass(frozen=True, slots=True)
class InferOutcome:
    """An encoded response and where its time went."""

    body: bytes
    header_length: int | None  # set when binary outputs follow the JSON header
    queue_s: float
    compute_s: float
    batch_size: int


def server_metadata() -> dict[str, Any]:
    return {"name": "normserve", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(store: ModelStore, servable: Servable) -> dict[str, Any]:
    config = servable.config
    export = config.export
    return {
        "name": config.name,
        "versions": [str(v) for v in store.versions(config.name)],
        "platform": config.platform,
        "inputs": [s.to_dict() for s in config.inputs],
        "outputs": [s.to_dict() for s in config.outputs],
        "parameters": {
            "version": str(config.version),
            "max_batch_size": config.max_batch_size,
            "labels": config.labels,
            "preprocess": config.preprocess,
            "providers": list(servable.model.providers),
            "golden_probe": config.golden_probe is not None,
            "export": {
                key: export.get(key)
                for key in ("arch", "opset", "normalization", "parity", "created")
                if key in export
            },
        },
    }


def model_config(servable: Servable, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration shape: dims exclude the batch axis (max_batch_size > 0)."""
    config = servable.config
    policy = batch_policy(config, settings)
    gpu = any(p.startswith("CUDA") for p in servable.model.providers)
    return {
        "name": config.name,
        "platform": config.platform,
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [config.version]}},
        "max_batch_size": config.max_batch_size,
        "input": [
            {
                "name": s.name,
                "data_type": DATATYPES[s.datatype].triton,
                "format": "FORMAT_NONE",
                "dims": list(s.shape[1:]),
            }
            for s in config.inputs
        ],
        "output": [
            {
                "name": s.name,
                "data_type": DATATYPES[s.datatype].triton,
                "dims": list(s.shape[1:]),
                "label_filename": "",
            }
            for s in config.outputs
        ],
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": int(policy.max_queue_delay_s * 1e6),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": int(policy.queue_timeout_s * 1e6),
                "allow_timeout_override": True,
                "max_queue_size": policy.max_queue_size,
            },
        },
        "instance_group": [
            {
                "name": f"{config.name}_0",
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": 1,
                "gpus": [settings.cuda_device_id] if gpu else [],
            }
        ],
        "parameters": {"labels": config.labels, "providers": list(servable.model.providers)},
    }


def model_stats(servables: list[Servable]) -> dict[str, Any]:
    return {"model_stats": [s.stats.to_triton(s.name, s.version) for s in servables]}


class Decoded(Protocol):
    """What every codec's decoder yields: the inputs of one request and what to return."""

    @property
    def inputs(self) -> dict[str, np.ndarray]: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def output_names(self) -> list[str]: ...
    @property
    def timeout_s(self) -> float | None: ...


D = TypeVar("D", bound=Decoded)


async def run(
    servable: Servable,
    decode: Callable[[LoadedModel], D | Awaitable[D]],
    encode: Callable[[LoadedModel, D, list[np.ndarray]], tuple[bytes, int | None]],
    span: RequestSpan | None = None,
) -> InferOutcome:
    """The one inference path of every protocol: decode, queue for a batch, encode. Statistics
    record success and failure alike; ``encode`` returns the body and, for a binary body, the
    length of its JSON header. ``span`` is the request's server span when tracing is on: the
    phases become its child spans. ``decode`` may be a coroutine (a body decoded off the
    server's process: ``codecs/offload.py``)."""
    start = time.perf_counter()
    try:
        request = decode(servable.model)
        if asyncio.iscoroutine(request):  # cheaper than inspect.isawaitable on the hot path
            request = await request
        decoded = time.perf_counter()
        result = await servable.batcher.submit(
            request.inputs, request.batch_size, request.output_names, request.timeout_s
        )
        returned = time.perf_counter()
        payload, json_length = encode(servable.model, request, result.outputs)
    except ServeError as exc:
        servable.stats.request_failed(exc.status, time.perf_counter() - start)
        if span is not None:
            span.set_attributes({**_model_attributes(servable), "normserve.error": exc.message})
        raise
    end = time.perf_counter()
    servable.stats.request_done(
        end - start, result.queue_s, result.compute_s, decoded - start, end - returned
    )
    if span is not None:
        _trace_phases(span, servable, result, start, decoded, returned, end)
    return InferOutcome(payload, json_length, result.queue_s, result.compute_s, result.batch_size)


def _model_attributes(servable: Servable) -> dict[str, Any]:
    return {"normserve.model.name": servable.name, "normserve.model.version": servable.version}


def _trace_phases(
    span: RequestSpan,
    servable: Servable,
    result: BatchResult,
    start: float,
    decoded: float,
    returned: float,
    end: float,
) -> None:
    """Decode, queue, compute and encode as child spans of the request's span. Queue and
    compute are placed from the batcher's measured durations (the batch runs on another
    thread) and carry the batch the request ran in. Nothing for a request not sampled."""
    if not span.recording:
        return
    batch = {"normserve.batch.id": result.batch_id, "normserve.batch.size": result.batch_size}
    span.set_attributes({**_model_attributes(servable), **batch})
    queued = decoded + result.queue_s
    span.phase("decode", start, decoded)
    span.phase("queue", decoded, queued, batch)
    span.phase("compute", queued, min(queued + result.compute_s, returned), batch)
    span.phase("encode", returned, end)


async def infer(
    servable: Servable,
    body: bytes,
    header_length: str | None,
    span: RequestSpan | None = None,
    offload: JsonOffload | None = None,
) -> InferOutcome:
    """V2 ``infer``: a JSON body, or the binary tensor extension's header and tensor bytes. With
    ``offload``, a large JSON part is decoded in its worker process."""

    def decode(model: LoadedModel) -> InferRequest | Awaitable[InferRequest]:
        if offload is not None and json_part(body, header_length) >= OFFLOAD_BYTES:
            return offload.infer_request(model, body, header_length)
        header, binary = split_body(body, header_length)
        booleans = json_booleans_possible(header)
        return decode_infer_request(
            parse_json_body(header), model, binary, booleans_possible=booleans
        )

    return await run(servable, decode, encode_infer_response, span)


async def infer_grpc(
    servable: Servable, message: pb.ModelInferRequest, span: RequestSpan | None = None
) -> InferOutcome:
    """V2 ``ModelInfer`` over gRPC; the body is a serialized ``ModelInferResponse``."""

    def decode(model: LoadedModel) -> InferRequest:
        return grpc_codec.decode_infer_request(message, model)

    return await run(servable, decode, grpc_codec.encode_infer_response, span)


async def predict(
    servable: Servable,
    body: bytes,
    default_top_k: int,
    span: RequestSpan | None = None,
    offload: JsonOffload | None = None,
) -> InferOutcome:
    """The KServe V1 ``:predict`` view over the same batcher (a large body decoded by
    ``offload`` when given)."""

    def decode(model: LoadedModel) -> PredictRequest | Awaitable[PredictRequest]:
        if offload is not None and len(body) >= OFFLOAD_BYTES:
            return offload.predict_request(model, body, default_top_k)
        return decode_predict_request(parse_json_body(body), model, default_top_k)

    def encode(
        model: LoadedModel, request: PredictRequest, outputs: list[np.ndarray]
    ) -> tuple[bytes, None]:
        return orjson.dumps(encode_predictions(model, outputs, request.top_k)), None

    return await run(servable, decode, encode, span)
