"""HTTP routes: read the request, call a handler, write the response."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service import handlers
from service.body import read_body
from service.runtime import Runtime

__all__ = ["router"]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
router = APIRouter()


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
    return _json(handlers.server_metadata())


@router.get("/v2/models/{model_name}", summary="Model metadata, newest version")
@router.get("/v2/models/{model_name}/versions/{version}", summary="Model metadata")
async def model_metadata(
    runtime: RuntimeDep, model_name: str, version: str | None = None
) -> Response:
    store = runtime.require_ready()
    return _json(handlers.model_metadata(store, store.get(model_name, version)))


@router.get("/v2/models/{model_name}/ready", summary="Model readiness, newest version")
@router.get("/v2/models/{model_name}/versions/{version}/ready", summary="Model readiness")
async def model_ready(runtime: RuntimeDep, model_name: str, version: str | None = None) -> Response:
    model = runtime.require_ready().get(model_name, version)
    return _json({"name": model.name, "version": str(model.version), "ready": True})


@router.post("/v2/models/{model_name}/infer", summary="Inference, newest version")
@router.post("/v2/models/{model_name}/versions/{version}/infer", summary="Inference")
async def model_infer(
    request: Request, runtime: RuntimeDep, model_name: str, version: str | None = None
) -> Response:
    model = runtime.require_ready().get(model_name, version)
    body = await read_body(request, runtime.settings.max_body_bytes)
    return Response(await handlers.infer(model, body), media_type="application/json")
