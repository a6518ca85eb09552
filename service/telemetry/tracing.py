"""OpenTelemetry tracing: optional (the ``tracing`` extra), off by default.

On when ``NORMSERVE_TRACING=on``, or with the default ``auto`` when the standard variables ask
for it: ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none``, or
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and
``OTEL_SDK_DISABLED`` is not ``true``). Everything else is configured the standard way, read by
OpenTelemetry itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the sampler
(``OTEL_TRACES_SAMPLER``), the batch processor (``OTEL_BSP_*``), the exporter's endpoint,
headers and protocol (``OTEL_EXPORTER_OTLP_*``) and the propagators (``OTEL_PROPAGATORS``, W3C
``traceparent`` by default).

Each request gets one server span, a child of the caller's ``traceparent`` when it sends one,
and child spans for its phases: ``decode``, ``queue``, ``compute`` and ``encode``. The phase
spans are written after the request, from the times the data plane measures anyway, so nothing
crosses into the batch thread; the batch a request ran in is on the ``queue`` and ``compute``
spans as ``normserve.batch.id`` (per model version) and ``normserve.batch.size`` (samples).

When tracing is off this module imports nothing of OpenTelemetry, and the request path pays one
``if``: the transports hold ``None`` instead of a :class:`Tracing`. A transport (HTTP here; gRPC
the same way) calls :meth:`Tracing.server_span` with the request's headers or metadata and hands
the :class:`RequestSpan` to ``dataplane.run``.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from normserve import __version__
from normserve.errors import UserError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["INSTALL_HINT", "RequestSpan", "Tracing", "start_tracing", "tracing_reason"]

INSTALL_HINT = "pip install 'normserve[tracing]'"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_OTLP_PROTOCOLS = {
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "http"),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "grpc"),
}


def tracing_reason(mode: str, environ: Mapping[str, str]) -> str | None:
    """Why tracing is on (a phrase for messages), or ``None`` when it is off.

    ``mode`` is the ``tracing`` setting: ``on``, ``off`` or ``auto`` (on when the standard
    ``OTEL_*`` variables ask for traces).
    """
    if mode == "off":
        return None
    if mode == "on":
        return "NORMSERVE_TRACING=on"
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter:
        return f"OTEL_TRACES_EXPORTER={exporter}"
    for name in _ENDPOINTS:
        if environ.get(name, "").strip():
            return f"{name} is set"
    return None


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    """One exporter from the standard names: ``otlp`` (its protocol from
    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``, default ``http/protobuf``) or ``console``."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise UserError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; expected otlp, console or none"
        )
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in _OTLP_PROTOCOLS:
        raise UserError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; expected "
            f"{' or '.join(_OTLP_PROTOCOLS)}"
        )
    module_name, package = _OTLP_PROTOCOLS[protocol]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise UserError(
            f"OTLP over {protocol} needs opentelemetry-exporter-otlp-proto-{package}: "
            f"{INSTALL_HINT} brings the http/protobuf one"
        ) from None
    return module.OTLPSpanExporter()


def start_tracing(mode: str, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """The server's tracing as the ``tracing`` setting and ``OTEL_*`` variables say: ``None``
    when off; a :class:`Tracing` exporting through a batch processor when on. A start-up
    refusal (not installed, unknown exporter) is a ``UserError`` naming the variable."""
    reason = tracing_reason(mode, environ)
    if reason is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise UserError(
            f"tracing is on ({reason}) but the OpenTelemetry SDK is not installed: "
            f"{INSTALL_HINT}, or set NORMSERVE_TRACING=off"
        ) from None
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    exporters = [
        _exporter(name, environ)
        for name in (part.strip() for part in names.split(","))
        if name and name != "none"
    ]
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "normserve"}))
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider, owned=True)


class Tracing:
    """The spans of one server. Built only when tracing is on (see :func:`start_tracing`);
    tests pass a provider with an in-memory exporter."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        from opentelemetry import propagate, trace

        self._provider = provider
        self._owned = owned  # shut down (flushed) with the server when we built it
        self.tracer = provider.get_tracer("normserve", __version__)
        self._extract = propagate.extract
        self._server_kind = trace.SpanKind.SERVER
        self.in_context = trace.set_span_in_context
        self.error_status = lambda message: trace.Status(trace.StatusCode.ERROR, message)

    def server_span(
        self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> RequestSpan:
        """Start the server span of one request. ``carrier`` holds the request's headers (or
        gRPC metadata) by lower-case name; its ``traceparent`` (and whatever else the
        configured propagators read) makes the span a child of the caller's."""
        parent = self._extract(carrier)
        span = self.tracer.start_span(
            name, context=parent, kind=self._server_kind, attributes=dict(attributes)
        )
        return RequestSpan(self, span)

    def shutdown(self) -> None:
        """Export what is buffered and stop (only a provider this module built)."""
        if self._owned:
            shutdown = getattr(self._provider, "shutdown", None)
            if shutdown is not None:
                shutdown()


class RequestSpan:
    """The server span of one request and the phase spans written under it.

    Phase times are ``time.perf_counter()`` readings, turned into wall-clock nanoseconds
    against the pair of clocks read when the server span started.
    """

    __slots__ = ("_epoch_ns", "_perf", "_tracing", "recording", "span")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing = tracing
        self.span = span
        self.recording = span.is_recording()  # False when the sampler left this request out
        self._perf = time.perf_counter()
        self._epoch_ns = time.time_ns()

    @property
    def trace_id(self) -> str:
        """The W3C trace id (32 hex digits), for log lines."""
        return format(self.span.get_span_context().trace_id, "032x")

    def _ns(self, perf: float) -> int:
        return self._epoch_ns + int((perf - self._perf) * 1e9)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.span.set_attributes(dict(attributes))

    def phase(
        self, name: str, start: float, end: float, attributes: Mapping[str, Any] | None = None
    ) -> None:
        """A finished child span ``name`` from ``start`` to ``end`` (``perf_counter`` times)."""
        child = self._tracing.tracer.start_span(
            name,
            context=self._tracing.in_context(self.span),
            start_time=self._ns(start),
            attributes=dict(attributes or {}),
        )
        child.end(end_time=self._ns(max(start, end)))

    def fail(self, message: str) -> None:
        """Mark the request failed (a server-side failure), with the client's error message."""
        self.span.set_status(self._tracing.error_status(message))

    def end(self, name: str | None = None) -> None:
        """End the server span, renamed once the route is known."""
        if name is not None:
            self.span.update_name(name)
        self.span.end()
