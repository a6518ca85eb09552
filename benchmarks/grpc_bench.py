"""gRPC beside HTTP on one server (the same process, runtime and batcher): batch-1 requests one
at a time, and 64 concurrent requests in a closed loop, digits_cnn, server defaults otherwise.

HTTP: the benchmarks' own HTTP/1.1 client with the binary tensor extension; one keep-alive
connection for the sequential run, 64 connections for the concurrent one (``loadgen``). gRPC:
grpc's own client sending pre-serialized ``ModelInferRequest`` bytes (no tritonclient wrapper,
as the HTTP side has none); one channel, so the 64 concurrent requests are 64 HTTP/2 streams on
one connection (``grpc.aio``). The two protocols alternate over rounds; every answer of the
first request of each is checked against bare ONNX Runtime. Client and server share the
machine's cores, so each row also reports the server's CPU time per request.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bare import load_served_model
from benchmarks.charts import figure, save
from benchmarks.context import Context, Target
from benchmarks.http_client import HttpConnection
from benchmarks.loadgen import run_load
from benchmarks.server_process import HOST, free_port, running_server
from benchmarks.stats import summarize_latencies
from benchmarks.v2_payload import decode_response, infer_request

NAME = "grpc_bench"
ARCH = "digits_cnn"
CONCURRENCY = 64
INFER = "/inference.GRPCInferenceService/ModelInfer"
PROTOCOLS = ("http", "grpc")
COLORS = {"http": "#1f77b4", "grpc": "#2ca02c"}


def _grpc_request(model: str, name: str, x: np.ndarray) -> bytes:
    from normserve.service.codecs import inference_pb2 as pb

    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype="FP32", shape=x.shape)
    message.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    return message.SerializeToString()


def _grpc_outputs(body: bytes) -> dict[str, np.ndarray]:
    from normserve.service.codecs import inference_pb2 as pb

    response = pb.ModelInferResponse.FromString(body)
    return {
        o.name: np.frombuffer(raw, np.float32).reshape(tuple(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def _sequential_grpc(target: str, payload: bytes, count: int) -> tuple[list[float], bytes]:
    import grpc

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        first = call(payload, timeout=30)
        for _ in range(max(10, count // 10)):  # warm-up, unrecorded
            call(payload, timeout=30)
        latencies = []
        for _ in range(count):
            start = time.perf_counter()
            call(payload, timeout=30)
            latencies.append(time.perf_counter() - start)
    return latencies, first


def _sequential_http(port: int, request: bytes, count: int) -> tuple[list[float], Any]:
    with HttpConnection(HOST, port) as connection:
        first = connection.request(request)
        for _ in range(max(10, count // 10)):
            connection.request(request)
        latencies = [connection.timed(request)[0] for _ in range(count)]
    return latencies, first


async def _concurrent_grpc_async(
    target: str, payload: bytes, concurrency: int, warmup_s: float, duration_s: float
) -> tuple[list[float], float, int]:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        await call(payload, timeout=30)
        start = time.perf_counter()
        window = start + warmup_s
        end = window + duration_s
        latencies: list[float] = []
        errors = 0
        last = window

        async def worker() -> None:
            nonlocal errors, last
            while True:
                sent = time.perf_counter()
                if sent >= end:
                    return
                try:
                    await call(payload, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                done = time.perf_counter()
                if sent >= window:
                    latencies.append(done - sent)
                    last = done

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, last - window, errors


def _summary(latencies: list[float], seconds: float, cpu_s: float) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "latency_ms": summarize_latencies(latencies).to_dict(),
        "server_cpu_us_per_request": round(cpu_s / len(latencies) * 1e6, 1),
    }


def _cpu(server: Any) -> float:
    cpu = server.cpu_seconds()
    return cpu["main"] + cpu["other"]


def measure(ctx: Context) -> dict[str, Any]:
    bench = ctx.workspace.model(ARCH)
    repository = ctx.workspace.repository_of(NAME, [ARCH])
    input_name = bench.checkpoint.input.name
    x = bench.inputs[:1].numpy().astype(np.float32)
    reference = load_served_model(repository / bench.name / "1", {"provider": "cpu"})
    (expected,) = reference.session.run(None, {input_name: x})
    sequential_count = ctx.pick(2000, 150)
    warmup_s, duration_s = ctx.pick(1.0, 0.3), ctx.pick(5.0, 1.0)
    rounds = ctx.pick(3, 1)
    grpc_port = free_port()
    env = {
        "NORMSERVE_PROVIDER": "cpu",
        "NORMSERVE_LOG_LEVEL": "warning",
        "NORMSERVE_INTRA_OP_THREADS": "1",
        "NORMSERVE_GRPC_PORT": str(grpc_port),
    }
    log = ctx.work_dir / "logs" / f"{NAME}.log"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        p: {"sequential": [], "concurrent": []} for p in PROTOCOLS
    }
    with running_server(repository, log, env=env) as server:
        target = f"{HOST}:{grpc_port}"
        http_request = infer_request(
            f"{HOST}:{server.port}", bench.name, {input_name: x}, binary=True
        )
        grpc_payload = _grpc_request(bench.name, input_name, x)
        for round_ in range(rounds):
            order = PROTOCOLS if round_ % 2 == 0 else PROTOCOLS[::-1]
            for protocol in order:
                ctx.log(f"   round {round_ + 1}/{rounds}: {protocol} sequential")
                cpu = _cpu(server)
                if protocol == "grpc":
                    latencies, first = _sequential_grpc(target, grpc_payload, sequential_count)
                    (got,) = _grpc_outputs(first).values()
                else:
                    latencies, response = _sequential_http(
                        server.port, http_request, sequential_count
                    )
                    (got,) = decode_response(response).values()
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
                seconds = sum(latencies)
                runs[protocol]["sequential"].append(
                    _summary(latencies, seconds, _cpu(server) - cpu)
                )
            for protocol in order:
                ctx.log(f"   round {round_ + 1}/{rounds}: {protocol} x{CONCURRENCY}")
                cpu = _cpu(server)
                if protocol == "grpc":
                    latencies, seconds, errors = asyncio.run(
                        _concurrent_grpc_async(
                            target, grpc_payload, CONCURRENCY, warmup_s, duration_s
                        )
                    )
                else:
                    load = run_load(
                        HOST,
                        server.port,
                        http_request,
                        concurrency=CONCURRENCY,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                    )
                    latencies, seconds, errors = load.latencies_s, load.duration_s, load.errors
                if errors:
                    raise RuntimeError(f"{protocol}: {errors} failed requests at {CONCURRENCY}")
                row = _summary(latencies, seconds, _cpu(server) - cpu)
                runs[protocol]["concurrent"].append(row)
    best = {
        p: {
            "sequential": min(runs[p]["sequential"], key=lambda r: r["latency_ms"]["p50"]),
            "concurrent": max(runs[p]["concurrent"], key=lambda r: r["throughput_rps"]),
        }
        for p in PROTOCOLS
    }
    ratio = (
        best["grpc"]["concurrent"]["throughput_rps"] / best["http"]["concurrent"]["throughput_rps"]
    )
    target = Target(
        name="gRPC throughput vs HTTP, batch 1, 64 concurrent",
        goal="≥ 1x HTTP's (our own bar; the issue sets none)",
        value=round(ratio, 3),
        unit="x",
        met=ratio >= 1.0,
        note="one server and batcher; the clients share the two cores with it",
    )
    return {
        "config": {
            "arch": ARCH,
            "input": list(x.shape),
            "sequential_requests": sequential_count,
            "concurrency": CONCURRENCY,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "rounds": rounds,
            "server": env | {"NORMSERVE_GRPC_PORT": "<free port>"},
        },
        "runs": runs,
        "best": best,
        "targets": [target.to_dict()],
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    fig, axes = figure(1, 2)
    best = result["best"]
    left, right = axes[0]
    for i, protocol in enumerate(PROTOCOLS):
        latency = best[protocol]["sequential"]["latency_ms"]
        left.bar(i - 0.2, latency["p50"], 0.4, color=COLORS[protocol], label=f"{protocol} p50")
        left.bar(i + 0.2, latency["p99"], 0.4, color=COLORS[protocol], alpha=0.5, hatch="//")
        left.text(i - 0.2, latency["p50"], f"{latency['p50']:.2f}", ha="center", va="bottom")
        left.text(i + 0.2, latency["p99"], f"{latency['p99']:.2f}", ha="center", va="bottom")
        row = best[protocol]["concurrent"]
        right.bar(i, row["throughput_rps"], 0.6, color=COLORS[protocol])
        right.text(
            i,
            row["throughput_rps"],
            f"{row['throughput_rps']:.0f} req/s\np50 {row['latency_ms']['p50']:.1f} ms"
            f"\np99 {row['latency_ms']['p99']:.1f} ms",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    for ax in (left, right):
        ax.set_xticks(range(len(PROTOCOLS)), [p.upper() for p in PROTOCOLS])
    left.set_ylabel("ms per request (p50 solid, p99 hatched)")
    left.set_title("batch 1, one request at a time")
    right.set_ylabel("requests per second")
    right.set_title(f"batch 1, {result['config']['concurrency']} concurrent")
    right.margins(y=0.3)
    save(fig, path, f"gRPC beside HTTP, {result['config']['arch']}, one server", result)
    return True
