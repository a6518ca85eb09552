"""What the routes do, with no HTTP in sight: metadata views and inference."""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from normserve import __version__
from service.codec import decode_infer_request, encode_infer_response, parse_json_body
from service.model import LoadedModel
from service.store import ModelStore

__all__ = ["infer", "model_metadata", "server_metadata"]

EXTENSIONS: list[str] = []


def server_metadata() -> dict[str, Any]:
    return {"name": "normserve", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(store: ModelStore, model: LoadedModel) -> dict[str, Any]:
    config = model.config
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
            "providers": list(model.providers),
            "export": {
                key: export.get(key)
                for key in ("arch", "opset", "normalization", "parity", "created")
                if key in export
            },
        },
    }


async def infer(model: LoadedModel, body: bytes) -> bytes:
    """Decode, run off the event loop, encode."""
    request = decode_infer_request(parse_json_body(body), model)
    outputs = await anyio.to_thread.run_sync(model.run, request.inputs, request.outputs)
    return encode_infer_response(model, request, outputs)
