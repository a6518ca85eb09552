"""Running the app under uvicorn, with a drain on SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn

from normserve.errors import UserError
from normserve.model_repository import remove_stale_staging
from normserve.service.app import create_app
from normserve.service.grpc.server import GrpcServer, grpc_server
from normserve.service.http.uvicorn_protocol import protocol_class
from normserve.service.runtime.state import Runtime
from normserve.service.settings import Settings
from normserve.service.telemetry.logs import configure_logging
from normserve.service.telemetry.tracing import start_tracing

__all__ = ["DrainingServer", "freeze_what_was_loaded", "listen", "serve"]

log = logging.getLogger("normserve.service")


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first signal drains before stopping.

    Draining: readiness answers 503 and new inference is refused (503, ``Retry-After``) while the
    socket stays open, so load balancers see the change; in-flight requests finish; then the
    server stops, all within ``drain_timeout_s``. A second signal stops at once.

    With ``grpc``, the gRPC server runs on the same loop and drains with HTTP: health turns
    NOT_SERVING, inference is refused (UNAVAILABLE), its RPCs count as in flight, and it stops
    before HTTP does, within the same budget.
    """

    def __init__(
        self, config: uvicorn.Config, runtime: Runtime, grpc: GrpcServer | None = None
    ) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.grpc = grpc
        self._drain_requested = False
        self._deadline: float | None = None
        self._hard_deadline = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_requested:
            self.should_exit = self.force_exit = True
            return
        self._drain_requested = True
        log.info("%s received: draining", signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and not self.should_exit:
            now = time.monotonic()
            total = self.runtime.settings.drain_timeout_s
            if self._deadline is None:
                self._hard_deadline = now + total
                # Keep part of the budget for closing connections after the drain.
                self._deadline = self._hard_deadline - min(1.0, total / 4)
                self.runtime.begin_drain()
                if self.grpc is not None:
                    await self.grpc.begin_drain()
            in_flight = self.runtime.in_flight
            if in_flight == 0 or now >= self._deadline:
                if in_flight:
                    log.warning("drain timeout: %d request(s) still in flight", in_flight)
                self.config.timeout_graceful_shutdown = max(0.1, self._hard_deadline - now - 0.3)
                self.should_exit = True
        return await super().on_tick(counter)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is not None:
            await self.grpc.start()  # a busy port: GrpcStartError, a UserError
        try:
            await super().serve(sockets)
        finally:
            if self.grpc is not None:
                await self.grpc.stop(0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is not None:
            # RPCs had the drain to finish; what is left gets the rest of the budget.
            remaining = self._hard_deadline - time.monotonic()
            await self.grpc.stop(0 if self.force_exit else max(0.1, remaining))
        await super().shutdown(sockets)


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound and listening now: a busy port, a host that is not
    this machine's or a port that needs privileges is one ``UserError`` before models load.
    Listening at once keeps the port ours while models load (connections wait in the
    backlog)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        hint = "; another process is listening there" if exc.errno == errno.EADDRINUSE else ""
        raise UserError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    return sock


def freeze_what_was_loaded() -> None:
    """Move every object alive now (modules, the app, the loaded models: about 70,000) out of
    the garbage collector's sight: they live as long as the process. A full collection under
    load then scans only what requests made, instead of pausing the event loop for ~45 ms each
    time, which was the p99 of the peers benchmark. Garbage already there is collected first."""
    gc.collect()
    gc.freeze()


def serve(settings: Settings) -> None:
    """Take the port, load the repository, then serve until a signal, draining first.

    Both checks come before any model loads: a busy port or a broken repository fails with one
    clear line (a ``UserError``) at once. Staging directories of exports that died mid-write
    are removed first (when the repository is writable).
    """
    configure_logging(settings)
    tracing = start_tracing(settings.tracing)
    sock = listen(settings.host, settings.port)
    for path in remove_stale_staging(settings.repository):
        log.info("removed %s: the staging directory of an export that did not finish", path)
    try:
        runtime = Runtime(settings=settings)
        runtime.load_repository()
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    config = uvicorn.Config(
        create_app(settings, runtime, tracing),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        http=protocol_class(settings),
    )
    server = DrainingServer(config, runtime, grpc_server(runtime, tracing))
    freeze_what_was_loaded()
    try:
        server.run(sockets=[sock])
    finally:
        if tracing is not None:
            tracing.shutdown()
