"""The OpenAPI document: what every route answers, errors included, and what inference reads.

FastAPI derives operations from the routes, but knows nothing of what they return (they build
their own responses), invents a 422 that never reaches a client (validation errors are 400),
and cannot see the request bodies of inference, which the routes read raw. This module
completes the document: a response schema for every 200, the error statuses each route can
return (always ``{"error": ...}``), and the inference request bodies (JSON or binary). Every
route must be listed here; building the document fails for one that is not, so the document
cannot silently fall behind the routes.

Over 300 lines because most of it is the schema table of every request and response.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from normserve.model_repository import DATATYPES

__all__ = ["install_openapi"]

_DATATYPES = sorted([*DATATYPES, "BYTES"])


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, **extra}


_STRING = {"type": "string"}
_SHAPE = {"type": "array", "items": {"type": "integer"}}
_TENSOR_METADATA = _obj(
    ["name", "datatype", "shape"],
    {"name": _STRING, "datatype": {"enum": _DATATYPES}, "shape": _SHAPE},
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        ["error"],
        {"error": {"type": "string", "description": "what was wrong and what was expected"}},
        additionalProperties=False,
    ),
    "Live": _obj(["live"], {"live": {"const": True}}),
    "Ready": _obj(["ready"], {"ready": {"const": True}}),
    "ServerMetadata": _obj(
        ["name", "version", "extensions"],
        {"name": _STRING, "version": _STRING, "extensions": {"type": "array", "items": _STRING}},
    ),
    "TensorMetadata": _TENSOR_METADATA,
    "ModelMetadata": _obj(
        ["name", "versions", "platform", "inputs", "outputs"],
        {
            "name": _STRING,
            "versions": {"type": "array", "items": _STRING},
            "platform": _STRING,
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            "parameters": {"type": "object"},
        },
    ),
    "ModelReady": _obj(
        ["name", "version", "ready"],
        {"name": _STRING, "version": _STRING, "ready": {"const": True}},
    ),
    "ModelConfig": _obj(
        ["name", "platform", "max_batch_size", "input", "output", "dynamic_batching"],
        {
            "name": _STRING,
            "platform": _STRING,
            "max_batch_size": {"type": "integer", "minimum": 1},
            "input": {"type": "array", "items": {"type": "object"}},
            "output": {"type": "array", "items": {"type": "object"}},
            "dynamic_batching": {"type": "object"},
        },
    ),
    "ModelStats": _obj(
        ["model_stats"],
        {
            "model_stats": {
                "type": "array",
                "items": _obj(
                    ["name", "version", "inference_count", "execution_count", "inference_stats"],
                    {
                        "name": _STRING,
                        "version": _STRING,
                        "inference_count": {"type": "integer", "minimum": 0},
                        "execution_count": {"type": "integer", "minimum": 0},
                        "inference_stats": {"type": "object"},
                    },
                ),
            }
        },
    ),
    "RepositoryIndexRequest": _obj([], {"ready": {"type": "boolean"}}),
    "RepositoryIndex": {
        "type": "array",
        "items": _obj(
            ["name", "version", "state", "reason"],
            {
                "name": _STRING,
                "version": _STRING,
                "state": {"enum": ["READY", "UNAVAILABLE"]},
                "reason": _STRING,
            },
        ),
    },
    "RepositoryLoadRequest": _obj(
        [], {"parameters": {"type": "object", "description": "must be empty: no overrides"}}
    ),
    "Empty": {"type": "object", "maxProperties": 0},
    "InferInput": _obj(
        ["name", "shape", "datatype"],
        {
            "name": _STRING,
            "shape": _SHAPE,
            "datatype": {"enum": _DATATYPES},
            "data": {
                "type": "array",
                "description": "the values, flat in row-major order or nested as the shape "
                "(finite numbers; omit with the binary extension)",
            },
            "parameters": _obj(
                [],
                {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "bytes this input takes after the JSON header",
                    }
                },
            ),
        },
    ),
    "InferRequestedOutput": _obj(
        ["name"],
        {
            "name": _STRING,
            "parameters": _obj(
                [],
                {
                    "binary_data": {"type": "boolean"},
                    "classification": {"type": "integer", "minimum": 0},
                },
            ),
        },
    ),
    "InferRequest": _obj(
        ["inputs"],
        {
            "id": _STRING,
            "parameters": _obj(
                [],
                {
                    "binary_data_output": {"type": "boolean"},
                    "timeout": {"type": "integer", "minimum": 0, "description": "microseconds"},
                },
            ),
            "inputs": {"type": "array", "minItems": 1, "items": _ref("InferInput")},
            "outputs": {"type": "array", "items": _ref("InferRequestedOutput")},
        },
    ),
    "InferOutput": _obj(
        ["name", "datatype", "shape"],
        {
            "name": _STRING,
            "datatype": {"enum": _DATATYPES},
            "shape": _SHAPE,
            "data": {"type": "array"},
            "parameters": _obj([], {"binary_data_size": {"type": "integer", "minimum": 0}}),
        },
    ),
    "InferResponse": _obj(
        ["model_name", "model_version", "outputs"],
        {
            "model_name": _STRING,
            "model_version": _STRING,
            "id": _STRING,
            "outputs": {"type": "array", "items": _ref("InferOutput")},
        },
    ),
    "PredictRequest": _obj(
        ["instances"],
        {
            "instances": {"type": "array", "minItems": 1, "description": "one item per sample"},
            "top_k": {"type": "integer", "minimum": 1},
        },
        additionalProperties=False,
    ),
    "PredictResponse": _obj(
        ["model_name", "model_version", "predictions"],
        {"model_name": _STRING, "model_version": _STRING, "predictions": {"type": "array"}},
    ),
}

_WHY = {
    400: "Bad input: malformed body, names, shapes, datatypes, sizes or version",
    401: "Missing or wrong `Authorization: Bearer` key",
    403: "Repository API while no admin key is configured",
    404: "Unknown model or version",
    413: "Body over the limit, declared or after inflating",
    415: "A Content-Encoding other than gzip, deflate or identity",
    500: "ONNX Runtime failed on input that passed every check",
    503: "Not ready, draining, or the model's queue is full",
    504: "The request waited longer than its queue timeout",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
_NEWEST = (401, 404, 503)
_MODEL = (400, *_NEWEST)  # a version in the path may be malformed
_ADMIN = (400, 401, 403, 413)
_INFER = (400, 401, 404, 413, 415, 500, 503, 504)

# (method, path) → (200 schema or media type, error statuses). Every route must be here.
_OPERATIONS: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {
    ("get", "/v2/health/live"): ("Live", ()),
    ("get", "/v2/health/ready"): ("Ready", (503,)),
    ("get", "/v2"): ("ServerMetadata", ()),
    ("get", "/metrics"): ("text/plain", ()),
    ("get", "/v2/models/stats"): ("ModelStats", (401, 503)),
    ("get", "/v2/models/{model_name}"): ("ModelMetadata", _NEWEST),
    ("get", "/v2/models/{model_name}/versions/{version}"): ("ModelMetadata", _MODEL),
    ("get", "/v2/models/{model_name}/ready"): ("ModelReady", _NEWEST),
    ("get", "/v2/models/{model_name}/versions/{version}/ready"): ("ModelReady", _MODEL),
    ("get", "/v2/models/{model_name}/config"): ("ModelConfig", _NEWEST),
    ("get", "/v2/models/{model_name}/versions/{version}/config"): ("ModelConfig", _MODEL),
    ("get", "/v2/models/{model_name}/stats"): ("ModelStats", _NEWEST),
    ("get", "/v2/models/{model_name}/versions/{version}/stats"): ("ModelStats", _MODEL),
    ("post", "/v2/models/{model_name}/infer"): ("InferResponse", _INFER),
    ("post", "/v2/models/{model_name}/versions/{version}/infer"): ("InferResponse", _INFER),
    ("post", "/v1/models/{model_name}:predict"): ("PredictResponse", _INFER),
    ("post", "/v2/repository/index"): ("RepositoryIndex", _ADMIN),
    ("post", "/v2/repository/models/{model_name}/load"): ("Empty", (*_ADMIN, 404)),
    ("post", "/v2/repository/models/{model_name}/unload"): ("Empty", (*_ADMIN, 404)),
}
_ADMIN_BODIES = {
    "/v2/repository/index": "RepositoryIndexRequest",
    "/v2/repository/models/{model_name}/load": "RepositoryLoadRequest",
    "/v2/repository/models/{model_name}/unload": "RepositoryLoadRequest",
}
_INFERENCE_BODIES = {  # request schema, and whether the binary extension applies
    "/v2/models/{model_name}/infer": ("InferRequest", True),
    "/v2/models/{model_name}/versions/{version}/infer": ("InferRequest", True),
    "/v1/models/{model_name}:predict": ("PredictRequest", False),
}
_SECURITY = [{}, {"bearer": []}]  # a key only when one is configured


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_MODEL_NAME = _path_parameter("model_name", "model name")
_VERSION = _path_parameter("version", "a positive integer; the newest version when omitted")


def _responses(success: str, errors: tuple[int, ...], binary: bool = False) -> dict[str, Any]:
    if "/" in success:
        ok: dict[str, Any] = {"description": "OK", "content": {success: {"schema": _STRING}}}
    else:
        content = {"application/json": {"schema": _ref(success)}}
        if binary:
            content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
        ok = {"description": "OK", "content": content}
    responses: dict[str, Any] = {"200": ok}
    for status in sorted(set(errors)):
        responses[str(status)] = {
            "description": _WHY[status],
            "content": {"application/json": {"schema": _ref("Error")}},
            **({"headers": _RETRY_AFTER} if status == 503 else {}),
        }
    return responses


_BINARY = {"type": "string", "format": "binary"}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "length of the JSON header of a binary-extension body",
    "schema": {"type": "integer", "minimum": 0},
}


def _inference_body(request: str, binary: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(request)}}
    if binary:
        content["application/octet-stream"] = {
            "schema": _BINARY,
            "description": "binary tensor extension: the JSON header, then raw tensor bytes",
        }
    return {"required": True, "content": content}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The complete document for ``app``; ``KeyError`` for a route missing from the table."""
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    documented = {
        (method.lower(), route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    missing = documented - set(_OPERATIONS)
    if missing:
        raise KeyError(f"routes missing from service/openapi.py: {sorted(missing)}")
    for (method, path), (success, errors) in _OPERATIONS.items():
        operation = schema["paths"][path][method]
        for parameter in operation.get("parameters", []):
            parameter.pop("title", None)
            parameter["schema"] = {"type": "string"}
        binary = _INFERENCE_BODIES.get(path, ("", False))[1]
        operation["responses"] = _responses(success, errors, binary=binary)
        if path in _INFERENCE_BODIES:
            request, _ = _INFERENCE_BODIES[path]
            operation["requestBody"] = _inference_body(request, binary)
            operation["security"] = _SECURITY
            if binary:
                operation["parameters"].append(_HEADER_LENGTH)
        elif path in _ADMIN_BODIES:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": _ref(_ADMIN_BODIES[path])}},
            }
            operation["security"] = [{"bearer": []}]
        elif path.startswith("/v2/models/"):
            operation["security"] = _SECURITY
    schema["components"] = {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi` at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
