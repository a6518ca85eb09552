"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

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

__all__ = ["App", "create_app"]

log = logging.getLogger("normserve.service")


class App(FastAPI):
    """FastAPI with request observation and the inference fast path in front of its stack.

    As ordinary middleware they would sit inside FastAPI's own wrappers (its error page,
    telemetry, body limit and Starlette's entry: ~7% of the event loop's time under load, a
    py-spy profile shows) for requests the fast path answers without FastAPI. In front, every
    HTTP request is observed and inference is answered first; everything else goes on to the
    whole framework stack (``framework``), whose handlers render its errors as before."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI as it is, behind the front."""
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings, runtime: Runtime | None = None, tracing: Tracing | None = None
) -> App:
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

    app = App(
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
    # Observation sees every request, then the fast path answers inference from the route
    # table above, then FastAPI's own stack.
    fast = FastPath(app.framework, routes=router.routes, runtime=runtime, api_key=api_key)
    app.front = ObserveMiddleware(fast, runtime=runtime, tracing=tracing)
    install_openapi(app)
    install_docs(app)
    return app
