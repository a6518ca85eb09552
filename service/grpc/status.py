"""The one table from the serving error family to gRPC status codes (errors.py's twin).

The message is the error's own, the same text HTTP sends; what HTTP says in headers travels as
trailing metadata, lower-cased (``retry-after`` with UNAVAILABLE, ``www-authenticate`` with
UNAUTHENTICATED).

=======================  ======  ======================
error                    HTTP    gRPC
=======================  ======  ======================
``BadRequest``           400     INVALID_ARGUMENT
``Unauthorized``         401     UNAUTHENTICATED
``Forbidden``            403     PERMISSION_DENIED
``NotFound``             404     NOT_FOUND
``PayloadTooLarge``      413     RESOURCE_EXHAUSTED
``UnsupportedEncoding``  415     INVALID_ARGUMENT
``InferenceFailed``      500     INTERNAL
``Unavailable``          503     UNAVAILABLE
``QueueFull``            503     UNAVAILABLE
``QueueTimeout``         504     DEADLINE_EXCEEDED
anything else            500     INTERNAL (logged)
=======================  ======  ======================
"""

from __future__ import annotations

import logging

import grpc

from normserve.service.errors import (
    INTERNAL_ERROR,
    BadRequest,
    Forbidden,
    InferenceFailed,
    NotFound,
    PayloadTooLarge,
    QueueTimeout,
    ServeError,
    Unauthorized,
    Unavailable,
    UnsupportedEncoding,
)

__all__ = ["CODES", "Status", "status_of"]

log = logging.getLogger("normserve.service")

CODES: dict[type[ServeError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnsupportedEncoding: grpc.StatusCode.INVALID_ARGUMENT,
    InferenceFailed: grpc.StatusCode.INTERNAL,
    Unavailable: grpc.StatusCode.UNAVAILABLE,  # QueueFull too: a subclass
    QueueTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    ServeError: grpc.StatusCode.INTERNAL,
}

Status = tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]


def status_of(exc: BaseException) -> Status:
    """Code, message and trailing metadata for ``exc``: the gRPC ``render``."""
    if not isinstance(exc, ServeError):
        log.error("internal error", exc_info=exc)
        exc = ServeError(INTERNAL_ERROR)
    code = next(CODES[kind] for kind in type(exc).__mro__ if kind in CODES)
    trailing = tuple((key.lower(), value) for key, value in exc.headers.items())
    return code, exc.message, trailing
