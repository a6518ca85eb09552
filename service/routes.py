"""HTTP routes: read the request, call a handler, write the response.

Three groups: open routes (health, server metadata, metrics), model routes (the API key when
one is set) and repository control (the admin key; off without one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response
from starlette.routing import Route

from service import handlers
from service.body import read_body
from service.encoding import choose_encoding, compress, decompress
from service.errors import BadRequest, Forbidden
from service.handlers import InferOutcome
from service.metrics import CONTENT_TYPE
from service.runtime import Runtime

__all__ = ["router"]


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def require_api_key(request: Request) -> None:
    key = request.app.state.api_key
    if key is not None:
        key.check(request.headers.get("authorization"))


async def require_admin_key(request: Request) -> None:
    key = request.app.state.admin_key
    if key is None:
        raise Forbidden("the repository API is disabled: set NORMSERVE_ADMIN_KEY to enable it")
    key.check(request.headers.get("authorization"))


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# One flat router, inference first: every included router or extra route is matched per request.
router = APIRouter()
API_KEY = [Depends(require_api_key)]
ADMIN_KEY = [Depends(require_admin_key)]


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


async def _read(request: Request, runtime: Runtime) -> bytes:
    limit = runtime.settings.max_body_bytes
    body = await read_body(request, limit)
    return decompress(body, request.headers.get("content-encoding"), limit)


def _infer_response(
    request: Request, outcome: InferOutcome, servable_name: str, version: int
) -> Response:
    headers = {
        "Server-Timing": (
            f"queue;dur={outcome.queue_s * 1000:.3f}, compute;dur={outcome.compute_s * 1000:.3f}"
        )
    }
    body = outcome.body
    if outcome.header_length is not None:
        headers["Inference-Header-Content-Length"] = str(outcome.header_length)
    coding = choose_encoding(request.headers.get("accept-encoding"))
    if coding is not None:
        body = compress(body, coding)
        headers["Content-Encoding"] = coding
        headers["Vary"] = "Accept-Encoding"
    request.state.log = {
        "model": servable_name,
        "version": version,
        "batch": outcome.batch_size,
        "queue_ms": round(outcome.queue_s * 1000, 3),
        "compute_ms": round(outcome.compute_s * 1000, 3),
    }
    media = "application/json" if outcome.header_length is None else "application/octet-stream"
    return Response(body, media_type=media, headers=headers)


async def model_infer(request: Request) -> Response:
    """POST /v2/models/{model_name}[/versions/{version}]/infer"""
    runtime: Runtime = request.app.state.runtime
    await require_api_key(request)
    model_name = request.path_params["model_name"]
    version = request.path_params.get("version")
    runtime.require_ready().get(model_name, version)  # 404 before reading a large body
    body = await _read(request, runtime)
    servable = runtime.require_ready().get(model_name, version)  # the newest after any swap
    outcome = await handlers.infer(
        servable, body, request.headers.get("inference-header-content-length")
    )
    return _infer_response(request, outcome, servable.name, servable.version)


async def v1_predict(request: Request) -> Response:
    """POST /v1/models/{model_name}:predict"""
    runtime: Runtime = request.app.state.runtime
    await require_api_key(request)
    model_name = request.path_params["model_name"]
    runtime.require_ready().get(model_name)
    body = await _read(request, runtime)
    servable = runtime.require_ready().get(model_name)
    outcome = await handlers.predict(servable, body, runtime.settings.top_k)
    return _infer_response(request, outcome, servable.name, servable.version)


def _hot_route(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A plain Starlette route (no dependency solving: the inference hot path) that names its
    template in the scope, as FastAPI's routes do, for metrics and logs."""

    async def named(request: Request) -> Response:
        request.scope["route_template"] = path
        return await endpoint(request)

    return Route(path, named, methods=["POST"])


router.routes.extend(
    [
        _hot_route("/v2/models/{model_name}/infer", model_infer),
        _hot_route("/v2/models/{model_name}/versions/{version}/infer", model_infer),
        _hot_route("/v1/models/{model_name}:predict", v1_predict),
    ]
)


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def health_live() -> Response:
    return _json({"live": True})


@router.get("/v2/health/ready", summary="Readiness: every model loaded and warmed up")
async def health_ready(runtime: RuntimeDep) -> Response:
    runtime.require_ready()
    return _json({"ready": True})


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> Response:
    return _json(handlers.server_metadata())


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v2/models/stats", summary="Statistics of every model version", dependencies=API_KEY)
async def all_stats(runtime: RuntimeDep) -> Response:
    return _json(handlers.model_stats(list(runtime.require_ready())))


@router.get(
    "/v2/models/{model_name}", summary="Model metadata, newest version", dependencies=API_KEY
)
@router.get(
    "/v2/models/{model_name}/versions/{version}", summary="Model metadata", dependencies=API_KEY
)
async def model_metadata(
    runtime: RuntimeDep, model_name: str, version: str | None = None
) -> Response:
    store = runtime.require_ready()
    return _json(handlers.model_metadata(store, store.get(model_name, version)))


@router.get(
    "/v2/models/{model_name}/ready", summary="Model readiness, newest version", dependencies=API_KEY
)
@router.get(
    "/v2/models/{model_name}/versions/{version}/ready",
    summary="Model readiness",
    dependencies=API_KEY,
)
async def model_ready(runtime: RuntimeDep, model_name: str, version: str | None = None) -> Response:
    servable = runtime.require_ready().get(model_name, version)
    return _json({"name": servable.name, "version": str(servable.version), "ready": True})


@router.get(
    "/v2/models/{model_name}/config", summary="Triton-shaped config, newest", dependencies=API_KEY
)
@router.get(
    "/v2/models/{model_name}/versions/{version}/config",
    summary="Model config",
    dependencies=API_KEY,
)
async def model_config(
    runtime: RuntimeDep, model_name: str, version: str | None = None
) -> Response:
    servable = runtime.require_ready().get(model_name, version)
    return _json(handlers.model_config(servable, runtime.settings))


@router.get(
    "/v2/models/{model_name}/stats", summary="Statistics, every version", dependencies=API_KEY
)
@router.get(
    "/v2/models/{model_name}/versions/{version}/stats", summary="Statistics", dependencies=API_KEY
)
async def model_stats(runtime: RuntimeDep, model_name: str, version: str | None = None) -> Response:
    store = runtime.require_ready()
    if version is None:
        store.versions(model_name)  # 404 for an unknown model
        servables = list(store.models[model_name].values())
    else:
        servables = [store.get(model_name, version)]
    return _json(handlers.model_stats(servables))


async def _admin_body(request: Request, runtime: Runtime) -> dict[str, Any]:
    body = await read_body(request, 1024 * 1024)
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("request body must be a JSON object")
    return parsed


@router.post(
    "/v2/repository/index", summary="Every version on disk and its state", dependencies=ADMIN_KEY
)
async def repository_index(request: Request, runtime: RuntimeDep) -> Response:
    body = await _admin_body(request, runtime)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("ready: expected true or false")
    return _json(runtime.index(ready_only=ready))


@router.post(
    "/v2/repository/models/{model_name}/load",
    summary="Load or reload a model",
    dependencies=ADMIN_KEY,
)
async def repository_load(request: Request, runtime: RuntimeDep, model_name: str) -> Response:
    body = await _admin_body(request, runtime)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters: expected an object")
    if parameters:
        raise BadRequest(
            f"parameters {sorted(parameters)[:4]} are not supported: normserve loads models only "
            "from the repository directory"
        )
    await runtime.load(model_name)
    return _json({})


@router.post(
    "/v2/repository/models/{model_name}/unload", summary="Unload a model", dependencies=ADMIN_KEY
)
async def repository_unload(request: Request, runtime: RuntimeDep, model_name: str) -> Response:
    body = await _admin_body(request, runtime)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict) or set(parameters) - {"unload_dependents"}:
        raise BadRequest("parameters: only unload_dependents is known")
    await runtime.unload(model_name)
    return _json({})
