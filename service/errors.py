"""The serving error family: one base class, its HTTP status, one handler for all of them.

This module is the single table of status decisions (DESIGN.md §5):

==========================  ======  ==================================================
error                       status  when
==========================  ======  ==================================================
``BadRequest``              400     bad input: body, shape, datatype, names, sizes;
                                    a load request whose model fails to load
``Unauthorized``            401     missing or wrong key (with ``WWW-Authenticate``)
``Forbidden``               403     repository API while no admin key is configured
``NotFound``                404     unknown model, version or route
(FastAPI's 405)             405     known path, wrong method (with ``Allow``)
``PayloadTooLarge``         413     body over ``max_body_bytes`` (before or after inflating)
``UnsupportedEncoding``     415     a ``Content-Encoding`` other than gzip, deflate, identity
``InferenceFailed``         500     ONNX Runtime failed on input that passed every check
``Unavailable``             503     not ready, draining (with ``Retry-After``)
``QueueFull``               503     the model version's queue is full (with ``Retry-After``)
``QueueTimeout``            504     request timed out in the queue
anything else               500     a bug; logged with its traceback
==========================  ======  ==================================================
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Send

__all__ = [
    "INTERNAL_ERROR",
    "BadRequest",
    "Forbidden",
    "InferenceFailed",
    "NotFound",
    "PayloadTooLarge",
    "QueueFull",
    "QueueTimeout",
    "ServeError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedEncoding",
    "error_response",
    "install_error_handlers",
    "raw_response",
    "render",
    "send_rendered",
]

log = logging.getLogger("normserve.service")
INTERNAL_ERROR = "internal server error (a bug: see the server log)"
"""What a client is told of a bug (the log has the rest)."""


class ServeError(Exception):
    """Base of every error a client may see; ``status`` is its HTTP status."""

    status: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServeError):
    status = 400


class Unauthorized(ServeError):
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServeError):
    status = 403


class NotFound(ServeError):
    status = 404


class PayloadTooLarge(ServeError):
    status = 413


class UnsupportedEncoding(ServeError):
    status = 415


class InferenceFailed(ServeError):
    status = 500


class Unavailable(ServeError):
    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QueueFull(Unavailable):
    """Overload: the batcher's bounded queue is full."""


class QueueTimeout(ServeError):
    status = 504


RawHeaders = list[tuple[bytes, bytes]]


def render(exc: BaseException) -> tuple[int, RawHeaders, bytes]:
    """The one place that turns an exception into status, headers and ``{"error": ...}``: the
    inference fast path sends it as is, FastAPI's handlers wrap it in a ``Response``."""
    if not isinstance(exc, ServeError):
        log.error("internal error", exc_info=exc)
        exc = ServeError(INTERNAL_ERROR)
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return exc.status, headers, orjson.dumps({"error": exc.message})


async def send_rendered(send: Send, rendered: tuple[int, RawHeaders, bytes]) -> None:
    """Send a rendered answer as ASGI messages, with its ``content-length``."""
    status, headers, body = rendered
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def raw_response(rendered: tuple[int, RawHeaders, bytes]) -> Response:
    status, headers, body = rendered
    response = Response(content=body, status_code=status)
    response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
    return response


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An ``{"error": message}`` response with this status (for statuses outside the family)."""
    error = ServeError(message, headers=headers)
    error.status = status
    return raw_response(render(error))


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": ...}`` with the status from the table above."""

    async def serve_error(_request: Request, exc: Exception) -> Response:
        return raw_response(render(exc))

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, _describe_validation(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return raw_response(render(ServeError(INTERNAL_ERROR)))

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
