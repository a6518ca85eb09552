"""gRPC calls report to the same tracing as HTTP: one server span per call, a child of the
caller's ``traceparent`` metadata, with the data plane's phase spans under ModelInfer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.grpc import service_pb2 as triton_pb

from normserve.service.grpc.server import GrpcServer
from normserve.service.runtime.state import Runtime
from normserve.service.settings import Settings
from normserve.service.telemetry.tracing import Tracing
from tests.service.fake_models import write_entry

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
INFER = "/inference.GRPCInferenceService/ModelInfer"


async def _calls(runtime: Runtime, tracing: Tracing) -> list[grpc.StatusCode]:
    server = GrpcServer(runtime, 0, tracing)
    port = await server.start()
    x = np.ones((2, 3), np.float32)
    good = triton_pb.ModelInferRequest(model_name="affine")
    good.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    good.raw_input_contents.append(x.tobytes())
    codes = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary(INFER)
            for request in (good, triton_pb.ModelInferRequest(model_name="nothing")):
                try:
                    await method(
                        request.SerializeToString(), metadata=(("traceparent", TRACEPARENT),)
                    )
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
    finally:
        await server.stop(0)
        await runtime.shutdown()
    return codes


def test_grpc_calls_are_server_spans_with_phases(tmp_path: Path):
    write_entry(tmp_path / "repo", "affine", 1)
    runtime = Runtime(Settings(repository=tmp_path / "repo", provider="cpu", host="127.0.0.1"))
    runtime.load_repository()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    codes = asyncio.run(_calls(runtime, Tracing(provider)))
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND]
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert [s.name for s in servers] == ["inference.GRPCInferenceService/ModelInfer"] * 2
    ok, missing = servers
    for span in servers:
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.method"] == "ModelInfer"
    assert ok.attributes["rpc.grpc.status_code"] == 0
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status.status_code is not StatusCode.ERROR, "a client's mistake, not ours"
    children = {
        s.name for s in spans if s.parent is not None and s.parent.span_id == ok.context.span_id
    }
    assert children == {"decode", "queue", "compute", "encode"}
