"""The gRPC server: ``grpc.aio`` on the event loop uvicorn runs, sharing its runtime.

One loop, one runtime: the batcher, the store, the statistics and the metrics are the ones HTTP
uses, and no lock is needed between the two protocols. Messages over ``max_body_bytes`` are
refused by gRPC itself (RESOURCE_EXHAUSTED) before they are read. The port is bound without
``SO_REUSEPORT``, so a busy port stops start-up instead of being shared with another server.
"""

from __future__ import annotations

import asyncio
import errno
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from normserve.errors import UserError
from normserve.service.grpc.servicer import SERVICE, InferenceServicer
from normserve.service.http.auth import BearerKey
from normserve.service.runtime.state import Runtime
from normserve.service.telemetry.tracing import Tracing

__all__ = ["GrpcServer", "GrpcStartError", "grpc_server"]

log = logging.getLogger("normserve.service")


class GrpcStartError(UserError):
    """The gRPC port cannot be bound."""


async def _check_free(host: str, port: int, address: str) -> None:
    """Listen there for a moment first: a busy port is one clear line, not gRPC core's log."""
    if port == 0:
        return
    try:
        probe = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host, port, reuse_address=True
        )
    except OSError as exc:
        hint = "; another process is listening there" if exc.errno == errno.EADDRINUSE else ""
        reason = exc.strerror or str(exc)
        raise GrpcStartError(
            f"cannot serve gRPC on {address} (NORMSERVE_GRPC_PORT): {reason}{hint}"
        ) from None
    probe.close()
    await probe.wait_closed()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """``start`` inside the running loop; ``begin_drain`` then ``stop`` on the way out."""

    def __init__(self, runtime: Runtime, port: int, tracing: Tracing | None = None) -> None:
        self.runtime = runtime
        self.requested_port = port
        self.tracing = tracing
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> int:
        """Bind and serve; the port bound (``GrpcStartError`` when it cannot be bound)."""
        settings = self.runtime.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        api_key = BearerKey(settings.api_key, "inference") if settings.api_key else None
        admin_key = (
            BearerKey(settings.admin_key, "repository control") if settings.admin_key else None
        )
        server.add_generic_rpc_handlers(
            (InferenceServicer(self.runtime, api_key, admin_key, self.tracing).handler(),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = _address(settings.host, self.requested_port)
        await _check_free(settings.host, self.requested_port, address)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GrpcStartError(
                f"cannot serve gRPC on {address} (NORMSERVE_GRPC_PORT): {exc}; is the port in use?"
            ) from None
        if port == 0:  # older gRPC reports a failed bind this way
            raise GrpcStartError(f"cannot serve gRPC on {address} (NORMSERVE_GRPC_PORT)")
        await server.start()
        await self._health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._server, self.port = server, port
        log.info("gRPC on %s", _address(settings.host, port))
        return port

    async def begin_drain(self) -> None:
        """Health answers NOT_SERVING from now on (inference is refused by the runtime)."""
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float | None) -> None:
        """Stop accepting; RPCs in progress get ``grace_s`` to finish (None: no limit)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace_s)


def grpc_server(runtime: Runtime, tracing: Tracing | None = None) -> GrpcServer | None:
    """The gRPC server ``NORMSERVE_GRPC_PORT`` asks for, or None when it is off."""
    port = runtime.settings.grpc_port
    return None if port is None else GrpcServer(runtime, port, tracing)
