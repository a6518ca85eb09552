"""Per-request observation: request id, in-flight count, HTTP metrics, one access log line,
and, when tracing is on, the request's server span.

A pure ASGI middleware (no per-request objects beyond a closure). Routes add their own fields
(model, version, queue and compute times) to ``request.state.log``. With tracing off the only
cost is one ``if``; on, the span (a child of the caller's ``traceparent``) is in
``scope["state"]["span"]`` for the inference path to add its phase spans to.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from normserve.service.errors import INTERNAL_ERROR, ServeError, render, send_rendered
from normserve.service.telemetry.request_ids import request_id

if TYPE_CHECKING:
    from normserve.service.runtime.state import Runtime
    from normserve.service.telemetry.tracing import Tracing

__all__ = ["ObserveMiddleware"]

access = logging.getLogger("normserve.access")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return request_id(value.decode("latin-1"))
    return request_id(None)


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, runtime: Runtime, tracing: Tracing | None = None) -> None:
        self.app = app
        self.runtime = runtime
        self.tracing = tracing
        # HTTP requests being served: the gauge reads it when scraped (no lock per request).
        self.in_flight = 0
        runtime.metrics.in_flight.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif self.tracing is None:
            await self._observe(scope, receive, send)
        else:
            await self._traced(self.tracing, scope, receive, send)

    async def _traced(self, tracing: Tracing, scope: Scope, receive: Receive, send: Send) -> None:
        """The request inside its server span, which ``state["span"]`` hands to the data plane
        and whose trace id the access log line carries."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        span = tracing.server_span(
            method,
            headers,
            {
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
        )
        state = scope.setdefault("state", {})
        state["span"] = span
        state["log"] = {"trace_id": span.trace_id}
        status = 500
        try:
            status = await self._observe(scope, receive, send)
        finally:
            template = getattr(scope.get("route"), "path", None)
            attributes: dict[str, object] = {
                "http.response.status_code": status,
                "normserve.request_id": state.get("request_id", ""),
            }
            if template is not None:
                attributes["http.route"] = template
            span.set_attributes(attributes)
            if status >= 500:
                span.fail(f"HTTP {status}")
            span.end(f"{method} {template}" if template else method)

    async def _observe(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Run the request with its id, in-flight count, metrics and log line; its status."""
        start = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = False
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        runtime = self.runtime
        metrics = runtime.metrics
        runtime.in_flight += 1
        self.in_flight += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug in front of FastAPI (which renders its own): answered {"error": ...} 500
            # when nothing was sent yet, then raised on for the server to log, as
            # Starlette's error middleware does.
            if not started:
                await send_rendered(send_with_id, render(ServeError(INTERNAL_ERROR)))
            raise
        finally:
            runtime.in_flight -= 1
            self.in_flight -= 1
            template = getattr(scope.get("route"), "path", "unmatched")
            metrics.http_request(scope["method"], template, status).inc()
            if runtime.settings.access_log:
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    **state.get("log", {}),
                }
                access.info("request", extra={"fields": fields})
        return status
