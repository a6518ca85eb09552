"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from normserve import __version__
from normserve.service.errors import install_error_handlers
from normserve.service.http.auth import BearerKey
from normserve.service.http.docs import install_docs
from normserve.service.http.fastpath import FastPath
from normserve.service.http.observe import ObserveMiddleware
from normserve.service.http.openapi import install_openapi
from normserve.service.http.routes import router
from normserve.service.runtime.state import Runtime
from normserve.service.settings import Settings
from normserve.service.telemetry.tracing import Tracing

__all__ = ["create_app"]

log = logging.getLogger("normserve.service")


def create_app(
    settings: Settings, runtime: Runtime | None = None, tracing: Tracing | None = None
) -> FastAPI:
    """Build the app; the repository is loaded at start-up (lifespan), off the event loop.

    Pass ``runtime`` to serve an already-loaded set of models (the server and tests do), and
    ``tracing`` to trace requests (``telemetry.tracing.start_tracing``; off when ``None``).
    """
    runtime = runtime or Runtime(settings=settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not runtime.ready:
            await anyio.to_thread.run_sync(runtime.load_repository)
            log.info("ready: %d model version(s) from %s", len(runtime.store), settings.repository)
        runtime.start()
        try:
            yield
        finally:
            await runtime.shutdown()

    api_key = BearerKey(settings.api_key, "inference") if settings.api_key else None

    app = FastAPI(
        title="normserve",
        version=__version__,
        summary="Folded, frozen, proven ONNX models over the Open Inference Protocol (V2)",
        lifespan=lifespan,
        # Swagger UI from the package's own assets (install_docs); no CDN pages.
        docs_url=None,
        redoc_url=None,
        # Tracing is ours (ObserveMiddleware); FastAPI's own would add a second server span.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    app.state.api_key = api_key
    app.state.admin_key = (
        BearerKey(settings.admin_key, "repository control") if settings.admin_key else None
    )
    install_error_handlers(app)
    app.include_router(router)
    # Ordinary middleware, the last added outermost: observation sees every request, then the
    # fast path answers inference from the route table above, then FastAPI's own stack.
    app.add_middleware(FastPath, routes=router.routes, runtime=runtime, api_key=api_key)
    app.add_middleware(ObserveMiddleware, runtime=runtime, tracing=tracing)
    install_openapi(app)
    install_docs(app)
    return app
