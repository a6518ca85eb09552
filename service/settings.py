"""Every serving setting, from ``NORMSERVE_*`` environment variables, validated at start-up."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from normserve.errors import UserError

__all__ = [
    "ENV_PREFIX",
    "LogFormat",
    "Provider",
    "Settings",
    "TracingMode",
    "check_environment",
    "settings_table",
]

ENV_PREFIX = "NORMSERVE_"
Provider = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["text", "json"]
TracingMode = Literal["auto", "on", "off"]


class Settings(BaseSettings):
    """Serving configuration. Each field is read from ``NORMSERVE_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", use_attribute_docstrings=True, frozen=True
    )

    repository: Path = Path("model_repository")
    """Model repository directory: ``<name>/<version>/{model.onnx, model.json}``."""

    allow_empty_repository: bool = False
    """Start even when the repository holds no model (to add models later through the
    repository API or polling); otherwise an empty repository stops start-up."""

    host: str = "127.0.0.1"
    """Interface to listen on; use 0.0.0.0 inside a container."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """gRPC port: the same V2 protocol (``GRPCInferenceService``, Triton's extensions,
    ``grpc.health.v1``) on the same host, beside HTTP; unset or ``off`` serves no gRPC (the
    images set 8001, Triton's port); 0 picks a free one."""

    @field_validator("intra_op_threads", "grpc_port", mode="before")
    @classmethod
    def _unset_spelled(cls, value: object, info: ValidationInfo) -> object:
        """The words that mean unset: ``auto`` threads (each loaded version chooses), an
        ``off`` gRPC port; an empty value for either."""
        words = {"intra_op_threads": {"", "auto"}, "grpc_port": {"", "off"}}[info.field_name]
        if isinstance(value, str) and value.strip().lower() in words:
            return None
        return value

    provider: Provider = "auto"
    """ONNX Runtime provider: ``auto`` (CUDA when onnxruntime-gpu offers it, else CPU), ``cpu``,
    or ``cuda`` (start-up fails when CUDA is unavailable)."""

    cuda_device_id: int = Field(default=0, ge=0)
    """GPU the CUDA provider runs on (ignored on CPU)."""

    intra_op_threads: int | None = Field(default=None, ge=0)
    """Threads ONNX Runtime uses inside one operator. Unset (``auto``): one thread for a CPU
    version whose one sample, run on one thread, is within ``NORMSERVE_INLINE_BATCH_MS`` (its
    operators are too small to share out: waking the pool for each costs more than it saves),
    else ONNX Runtime's choice, one per physical core. 0: always ONNX Runtime's choice; N: N
    threads."""

    intra_op_spinning: bool = False
    """Whether ONNX Runtime's worker threads spin (busy-wait) for work instead of sleeping. Off
    by default: spinning threads compete with the event loop for the cores and doubled the
    server's CPU per request under load (docs/benchmarks.md); on can shave microseconds off a
    large model's latency on cores the server has to itself."""

    inter_op_threads: int = Field(default=1, ge=1)
    """Threads ONNX Runtime uses across independent operators (sequential execution when 1)."""

    inline_batch_ms: float = Field(default=0.1, ge=0.0, le=100.0)
    """A batch expected to run within this many milliseconds (from the version's batch of one
    sample and full batch, timed at load) runs on the event loop itself instead of the
    version's thread: for such a batch the hand-off to the thread and back (~0.16 ms,
    benchmarks/overhead's "executor hop") costs more than the inference; bounds of 0.2 and
    0.4 ms did no better under load (docs/benchmarks.md). It is also the longest a batch holds
    the loop. 0 always uses the thread; models with a dynamic axis besides the
    batch always do (their cost depends on the request)."""

    max_queue_delay_ms: float = Field(default=0.0, ge=0.0, le=10_000.0)
    """Dynamic batching: longest a request waits for others to join its batch. 0 batches only
    what is already queued (no added latency when idle); a model's ``model.json`` may override
    it under ``dynamic_batching``."""

    max_queue_size: int = Field(default=1024, ge=1)
    """Dynamic batching: requests a model version may hold queued; one more is refused with 503
    and ``Retry-After`` (overridable per model)."""

    queue_timeout_ms: float = Field(default=30_000.0, gt=0.0)
    """Dynamic batching: a request still queued after this long is answered 504 (overridable per
    model; a request's own ``timeout`` parameter, in microseconds, may shorten it)."""

    retry_after_s: int = Field(default=1, ge=1)
    """Seconds sent in ``Retry-After`` with a 503 (queue full, not ready, draining)."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body accepted, before and after decompression; larger bodies get 413 (from
    ``Content-Length`` before reading, when the client sends it)."""

    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest request head (request line and headers together); a larger one is refused with
    431 as it arrives, before it is buffered in full, and the connection closes."""

    max_header_count: int = Field(default=100, ge=1)
    """Most header fields a request may carry; one more is refused with 431 and the connection
    closes."""

    header_timeout_s: float = Field(default=30.0, gt=0.0)
    """A request head must be complete this long after the connection opened (or after the
    previous answer on it); a late one is answered 408 and the connection closes (one that never
    sent a byte is closed without an answer)."""

    body_timeout_s: float = Field(default=30.0, gt=0.0)
    """A request body must deliver each 64 KiB (or its rest) within this long; a slower one is
    answered 408 and the connection closes. Time during which the server itself was not
    reading (backpressure) does not count."""

    max_pipelined_requests: int = Field(default=16, ge=1)
    """HTTP/1.1 pipelining: requests of one connection parsed ahead of the one being answered;
    at this many the connection is not read until one is answered."""

    max_unsent_bytes: int = Field(default=64 * 1024, ge=4096)
    """Back-pressure: while a connection's unsent answers exceed this (its client does not read
    them), the server stops reading that connection and starts no further request of it."""

    api_key: SecretStr | None = None
    """When set, model routes (``/v2/models/...``, ``/v1/models/...``) need
    ``Authorization: Bearer <key>``; health, server metadata and ``/metrics`` stay open."""

    admin_key: SecretStr | None = None
    """When set, enables the repository API (``/v2/repository/...``), which then needs
    ``Authorization: Bearer <key>``; when unset that API answers 403."""

    poll_interval_s: float = Field(default=0.0, ge=0.0)
    """Hot reload: seconds between repository scans; 0 turns polling off (the load API still
    reloads on demand)."""

    drain_timeout_s: float = Field(default=30.0, gt=0.0)
    """On SIGTERM/SIGINT: readiness turns 503, in-flight requests may finish for this long, then
    the process exits."""

    top_k: int = Field(default=5, ge=1)
    """Labels returned per instance by ``/v1/models/{m}:predict`` for models with labels."""

    log_format: LogFormat = "text"
    """Log lines as ``text`` or ``json`` (one object a line), access log included."""

    access_log: bool = True
    """Write one log line per HTTP request (request id, route, status, duration, timings)."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the server and its access log."""

    tracing: TracingMode = "auto"
    """OpenTelemetry traces (the ``tracing`` extra): ``auto`` is on when the standard
    ``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` asks for traces, ``on`` always
    (OTLP to ``OTEL_EXPORTER_OTLP_ENDPOINT``), ``off`` never. Every other option comes from the
    ``OTEL_*`` variables."""


# Variables with the prefix that belong to the project's other tools, not to the server:
# the benchmarks' own knobs and the container-engine script's cache.
_OTHER_TOOLS = ("NORMSERVE_BENCH_", "NORMSERVE_BASE_CACHE")


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse a ``NORMSERVE_*`` variable that names no setting (pydantic-settings ignores
    them): ``UserError`` naming it and the closest valid name."""
    known = [name.upper() for name in Settings.model_fields]
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name.startswith(_OTHER_TOOLS):
            continue
        field = name.removeprefix(ENV_PREFIX)
        if field in known:
            continue
        # Compared without the shared prefix, which would make every name look close.
        ratio, closest = max((difflib.SequenceMatcher(None, field, k).ratio(), k) for k in known)
        hint = (
            f"did you mean {ENV_PREFIX}{closest}?"
            if ratio >= 0.6
            else f"the closest is {ENV_PREFIX}{closest}; `normserve serve --help` lists them all"
        )
        raise UserError(f"unknown setting {variable}: no setting has that name ({hint})")


def settings_table() -> str:
    """The Markdown table of every setting, as README's serving section lists them."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else str(default)
        if isinstance(default, bool):
            shown = str(default).lower()
        doc = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `NORMSERVE_{name.upper()}` | `{shown}` | {doc} |")
    return "\n".join(rows)
