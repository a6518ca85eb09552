"""Running the app under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.runtime import Runtime
from service.settings import Settings

__all__ = ["serve"]


def serve(settings: Settings) -> None:
    """Load the repository, then serve until SIGINT/SIGTERM.

    Loading first means a broken repository fails with one clear line before a port is bound;
    on a signal uvicorn stops accepting, finishes in-flight requests and exits.
    """
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = Runtime(settings=settings)
    runtime.load_repository()
    uvicorn.run(
        create_app(settings, runtime),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
