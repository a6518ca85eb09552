"""Tracing: a server span per request, a child of the caller's W3C ``traceparent``, with decode,
queue, compute and encode under it and the batch on them; off by default, importing nothing.

In process with an in-memory exporter, and end to end: a real ``normserve serve`` configured only
by the standard ``OTEL_*`` variables, exporting OTLP over HTTP to a receiver in this test.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from normserve.errors import UserError
from normserve.service import Settings, create_app
from normserve.service.telemetry.tracing import Tracing, start_tracing, tracing_reason
from tests.service.fake_models import affine_reference
from tests.service.process import running_server, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PHASES = ["decode", "queue", "compute", "encode"]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(settings: Settings, exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with TestClient(
        create_app(settings, tracing=Tracing(provider)), raise_server_exceptions=False
    ) as c:
        yield c


def _body(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def _children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    parent_id = parent.context.span_id
    return {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent_id
    }


def test_infer_is_one_server_span_under_the_callers_traceparent(
    traced: TestClient, exporter: InMemorySpanExporter
):
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    response = traced.post(
        "/v2/models/affine/versions/1/infer",
        json=_body(x),
        headers={"traceparent": TRACEPARENT, "x-request-id": "req-7"},
    )
    assert response.status_code == 200, response.text
    y = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 2)
    np.testing.assert_allclose(y, affine_reference(x)[0], rtol=1e-5, atol=1e-6)  # still right

    (server,) = _server_spans(exporter)
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.name == "POST /v2/models/{model_name}/versions/{version}/infer"
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/v2/models/{model_name}/versions/{version}/infer"
    assert attributes["normserve.request_id"] == "req-7"
    assert attributes["normserve.model.name"] == "affine"
    assert attributes["normserve.model.version"] == 1
    assert attributes["normserve.batch.size"] == 2

    children = _children(exporter, server)
    assert sorted(children) == sorted(PHASES)
    assert all(c.context.trace_id == server.context.trace_id for c in children.values())
    # In order, inside the request's span, and the batch on queue and compute.
    ordered = [children[name] for name in PHASES]
    assert server.start_time <= ordered[0].start_time
    for before, after in itertools.pairwise(ordered):
        assert before.start_time <= before.end_time <= after.start_time + 1_000  # 1 us rounding
    assert ordered[-1].end_time <= server.end_time
    for name in ("queue", "compute"):
        batch = dict(children[name].attributes or {})
        assert batch["normserve.batch.size"] == 2
        assert batch["normserve.batch.id"] == attributes["normserve.batch.id"]


def test_without_traceparent_each_request_starts_its_own_trace(
    traced: TestClient, exporter: InMemorySpanExporter
):
    body = _body(np.ones((1, 3), dtype=np.float32))
    for _ in range(2):
        assert traced.post("/v2/models/affine/infer", json=body).status_code == 200
    first, second = _server_spans(exporter)
    assert first.parent is None
    assert second.parent is None
    assert first.context.trace_id != second.context.trace_id
    assert dict(first.attributes or {})["normserve.batch.id"] == 1
    assert dict(second.attributes or {})["normserve.batch.id"] == 2  # batches counted per version


def test_every_route_gets_a_server_span_and_failures_are_marked(
    traced: TestClient, exporter: InMemorySpanExporter
):
    assert traced.get("/v2/health/ready", headers={"traceparent": TRACEPARENT}).status_code == 200
    bad = traced.post("/v2/models/affine/infer", json={"inputs": [{"name": "nope"}]})
    assert bad.status_code == 400
    ready, failed = _server_spans(exporter)
    assert ready.name == "GET /v2/health/ready"
    assert format(ready.parent.span_id, "016x") == PARENT_ID
    assert _children(exporter, ready) == {}  # no inference, no phases
    attributes = dict(failed.attributes or {})
    assert attributes["http.response.status_code"] == 400
    assert "normserve.error" in attributes  # what the client was told
    assert failed.status.status_code is not StatusCode.ERROR  # a client error, not ours
    assert _children(exporter, failed) == {}


def test_a_caller_that_does_not_sample_gets_no_spans(
    traced: TestClient, exporter: InMemorySpanExporter
):
    # traceparent flags 00: the caller did not sample this trace; the default sampler follows.
    unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
    body = _body(np.ones((1, 3), dtype=np.float32))
    response = traced.post("/v2/models/affine/infer", json=body, headers={"traceparent": unsampled})
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()
    traced.post("/v2/models/affine/infer", json=body, headers={"traceparent": TRACEPARENT})
    assert len(exporter.get_finished_spans()) == 1 + len(PHASES)


def test_v1_predict_is_traced_too(traced: TestClient, exporter: InMemorySpanExporter):
    response = traced.post(
        "/v1/models/affine:predict",
        json={"instances": [[0.5, -1.0, 2.0]]},
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 200, response.text
    (server,) = _server_spans(exporter)
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert sorted(_children(exporter, server)) == sorted(PHASES)


def test_requests_batched_together_share_the_batch_id(
    repository: Path, exporter: InMemorySpanExporter
):
    # A long queue delay gathers three concurrent requests into one batch of 1 + 2 + 1 samples.
    settings = Settings(
        repository=repository, provider="cpu", intra_op_threads=1, max_queue_delay_ms=300
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings, tracing=Tracing(provider))
    sizes = [1, 2, 1]

    async def scenario() -> list[int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            "/v2/models/affine/versions/1/infer",
                            json=_body(np.ones((n, 3), dtype=np.float32)),
                        )
                        for n in sizes
                    )
                )
        return [r.status_code for r in responses]

    assert asyncio.run(scenario()) == [200, 200, 200]
    servers = _server_spans(exporter)
    assert len(servers) == 3
    ids = {dict(s.attributes or {})["normserve.batch.id"] for s in servers}
    assert len(ids) == 1
    for server in servers:
        compute = _children(exporter, server)["compute"]
        assert dict(compute.attributes or {})["normserve.batch.size"] == sum(sizes)


@pytest.mark.parametrize(
    ("mode", "environ", "expected"),
    [
        ("auto", {}, None),
        (
            "auto",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT is set",
        ),
        (
            "auto",
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h/v1/traces"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set",
        ),
        ("auto", {"OTEL_TRACES_EXPORTER": "console"}, "OTEL_TRACES_EXPORTER=console"),
        ("auto", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h"}, None),
        ("auto", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ("off", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h"}, None),
        ("on", {}, "NORMSERVE_TRACING=on"),
    ],
)
def test_when_tracing_is_on(mode: str, environ: dict[str, str], expected: str | None):
    assert tracing_reason(mode, environ) == expected


def test_start_tracing_refuses_what_it_cannot_export():
    with pytest.raises(UserError, match=r"OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"):
        start_tracing("auto", {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(UserError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json'"):
        start_tracing("on", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert start_tracing("auto", {}) is None
    console = start_tracing("auto", {"OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(console, Tracing)
    console.shutdown()


OFF_PROBE = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from normserve.service import Settings, create_app
from normserve.service.telemetry.tracing import start_tracing
settings = Settings(repository=Path(sys.argv[1]), provider="cpu", intra_op_threads=1)
assert start_tracing(settings.tracing) is None
with TestClient(create_app(settings, tracing=start_tracing(settings.tracing))) as client:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    headers = {"traceparent": sys.argv[2]}
    assert client.post("/v2/models/affine/infer", json=body, headers=headers).status_code == 200
print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
"""


def test_off_by_default_imports_no_sdk(repository: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NORMSERVE_"))}
    result = subprocess.run(
        [sys.executable, "-c", OFF_PROBE, str(repository), TRACEPARENT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector of one route: keeps every body POSTed to /v1/traces."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.mark.slow
def test_a_real_server_exports_otlp_configured_by_otel_variables(
    repository: Path, tmp_path: Path, collector: tuple[str, list[bytes]]
):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    endpoint, bodies = collector
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "normserve-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    body = _body(np.ones((1, 3), dtype=np.float32))
    with running_server(repository, tmp_path / "server.log", env) as server:
        response = httpx.post(
            f"{server.url}/v2/models/affine/infer",
            json=body,
            headers={"traceparent": TRACEPARENT},
            timeout=10,
        )
        assert response.status_code == 200, response.text

        def exported() -> dict[str, object] | None:
            spans = {}
            for raw in list(bodies):
                request = ExportTraceServiceRequest.FromString(raw)
                for resource_spans in request.resource_spans:
                    service = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }["service.name"]
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            if span.trace_id.hex() == TRACE_ID:
                                spans[span.name] = (span, service)
            return spans if len(spans) == 1 + len(PHASES) else None

        spans = wait_until(exported, 20, "the request's spans at the collector", server.proc)
    (server_span, service), *_ = (v for k, v in spans.items() if k.startswith("POST "))
    assert service == "normserve-under-test"
    assert server_span.parent_span_id.hex() == PARENT_ID
    for phase in PHASES:
        child, _ = spans[phase]
        assert child.parent_span_id == server_span.span_id
