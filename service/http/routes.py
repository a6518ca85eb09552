"""The route table: every HTTP route of the server, each reading the request, calling the data
plane and writing the response.

Four groups: open routes (health, server metadata, metrics), inference (the API key when one is
set; answered by the ``FastPath`` middleware from this same table, see ``fastpath.py``), model
routes (the API key when one is set) and repository control (the admin key; off without one).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from normserve.service import dataplane
from normserve.service.errors import BadRequest, Forbidden, raw_response
from normserve.service.http.body import read_body
from normserve.service.http.fastpath import Protocol, answer, inference_route
from normserve.service.runtime.state import Runtime
from normserve.service.telemetry.metrics import CONTENT_TYPE

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


@router.get("/v2/health/live", summary="Liveness: the process answers")
async def health_live() -> Response:
    return _json({"live": True})


@router.get("/v2/health/ready", summary="Readiness: every model loaded and warmed up")
async def health_ready(runtime: RuntimeDep) -> Response:
    runtime.require_ready()
    return _json({"ready": True})


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> Response:
    return _json(dataplane.server_metadata())


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)


async def _inference(
    request: Request, protocol: Protocol, model_name: str, version: str | None
) -> Response:
    runtime = request.app.state.runtime
    api_key = request.app.state.api_key
    scope, receive = request.scope, request.receive
    return raw_response(
        await answer(scope, receive, runtime, api_key, protocol, model_name, version)
    )


@router.post("/v2/models/{model_name}/infer", summary="Infer, newest version")
@inference_route(Protocol.V2)
async def infer(request: Request, model_name: str) -> Response:
    return await _inference(request, Protocol.V2, model_name, None)


@router.post("/v2/models/{model_name}/versions/{version}/infer", summary="Infer")
@inference_route(Protocol.V2)
async def infer_version(request: Request, model_name: str, version: str) -> Response:
    return await _inference(request, Protocol.V2, model_name, version)


@router.post("/v1/models/{model_name}:predict", summary="Predict (KServe V1)")
@inference_route(Protocol.V1)
async def predict(request: Request, model_name: str) -> Response:
    return await _inference(request, Protocol.V1, model_name, None)


@router.get("/v2/models/stats", summary="Statistics of every model version", dependencies=API_KEY)
async def all_stats(runtime: RuntimeDep) -> Response:
    return _json(dataplane.model_stats(list(runtime.require_ready())))


# Each route below comes twice: the newest version, and a version named in the path. Separate
# functions, so the newest-version routes take no (undocumented) ``version`` query parameter.


def _metadata(runtime: Runtime, model_name: str, version: str | None) -> Response:
    store = runtime.require_ready()
    return _json(dataplane.model_metadata(store, store.get(model_name, version)))


@router.get(
    "/v2/models/{model_name}", summary="Model metadata, newest version", dependencies=API_KEY
)
async def model_metadata(runtime: RuntimeDep, model_name: str) -> Response:
    return _metadata(runtime, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{version}", summary="Model metadata", dependencies=API_KEY
)
async def model_version_metadata(runtime: RuntimeDep, model_name: str, version: str) -> Response:
    return _metadata(runtime, model_name, version)


def _ready(runtime: Runtime, model_name: str, version: str | None) -> Response:
    servable = runtime.require_ready().get(model_name, version)
    return _json({"name": servable.name, "version": str(servable.version), "ready": True})


@router.get(
    "/v2/models/{model_name}/ready", summary="Model readiness, newest version", dependencies=API_KEY
)
async def model_ready(runtime: RuntimeDep, model_name: str) -> Response:
    return _ready(runtime, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{version}/ready",
    summary="Model readiness",
    dependencies=API_KEY,
)
async def model_version_ready(runtime: RuntimeDep, model_name: str, version: str) -> Response:
    return _ready(runtime, model_name, version)


def _config(runtime: Runtime, model_name: str, version: str | None) -> Response:
    servable = runtime.require_ready().get(model_name, version)
    return _json(dataplane.model_config(servable, runtime.settings))


@router.get(
    "/v2/models/{model_name}/config", summary="Triton-shaped config, newest", dependencies=API_KEY
)
async def model_config(runtime: RuntimeDep, model_name: str) -> Response:
    return _config(runtime, model_name, None)


@router.get(
    "/v2/models/{model_name}/versions/{version}/config",
    summary="Model config",
    dependencies=API_KEY,
)
async def model_version_config(runtime: RuntimeDep, model_name: str, version: str) -> Response:
    return _config(runtime, model_name, version)


@router.get(
    "/v2/models/{model_name}/stats", summary="Statistics, every version", dependencies=API_KEY
)
async def model_stats(runtime: RuntimeDep, model_name: str) -> Response:
    store = runtime.require_ready()
    store.versions(model_name)  # 404 for an unknown model
    return _json(dataplane.model_stats(list(store.models[model_name].values())))


@router.get(
    "/v2/models/{model_name}/versions/{version}/stats", summary="Statistics", dependencies=API_KEY
)
async def model_version_stats(runtime: RuntimeDep, model_name: str, version: str) -> Response:
    return _json(dataplane.model_stats([runtime.require_ready().get(model_name, version)]))


async def _admin_body(request: Request) -> dict[str, Any]:
    body = await read_body(request.receive, request.headers.get("content-length"), 1024 * 1024)
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
    body = await _admin_body(request)
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
    body = await _admin_body(request)
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
    body = await _admin_body(request)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict) or set(parameters) - {"unload_dependents"}:
        raise BadRequest("parameters: only unload_dependents is known")
    await runtime.unload(model_name)
    return _json({})
