"""Sustained load, verified: tens of thousands of mixed requests at concurrency 64 with dynamic
batching on, every response checked against the reference output for its own input, and the
server's resident memory sampled as the run goes.

Every request carries its own input (1 to 4 samples, JSON or binary body, rotating through a
pool of distinct inputs so that neighbours in a batch always differ): a batch split at the
wrong offset, or outputs handed to the wrong request, gives some request another's rows and is
counted as wrong. Below the queue bound nothing may fail. Memory is read from
``/proc/<pid>/status`` (VmRSS) after a warm-up and then after each tenth of the run: a leak
per request shows as steady growth, allocator noise as a plateau.

``python -m benchmarks --only soak`` (or ``make bench``) runs the full version; the suite runs a
2000-request version of the same client (tests/reliability/test_load.py).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.context import Context, Target
from benchmarks.http_client import HttpError, HttpResponse, ResponseParser
from benchmarks.stats import summarize_latencies
from benchmarks.v2_payload import decode_response, infer_request

__all__ = ["Probe", "SoakResult", "make_probes", "soak"]

NAME = "soak"
ARCH = "digits_cnn"
CONCURRENCY = 64
# Dynamic batching on: a 2 ms window lets the 64 connections' requests share batches.
SERVER = {
    "provider": "cpu",
    "log_level": "warning",
    "access_log": False,
    "intra_op_threads": 1,
    "max_queue_delay_ms": 2.0,
}
RSS_GROWTH_TARGET_MIB = 32.0
# Served outputs against ONNX Runtime on the same file: batching may change the kernel path.
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Probe:
    """One encoded request and the outputs its own input must produce."""

    raw: bytes
    expected: dict[str, np.ndarray]
    label: str


@dataclass
class SoakResult:
    requests: int
    statuses: dict[int, int]
    wrong: list[str]  # the first few wrong answers, described
    wrong_count: int
    latencies_s: list[float] = field(repr=False)
    duration_s: float

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0) - self.wrong_count

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "wrong": self.wrong_count,
            "wrong_examples": self.wrong,
            "duration_s": self.duration_s,
            "throughput_rps": self.requests / self.duration_s if self.duration_s else 0.0,
            "latency_ms": summarize_latencies(self.latencies_s).to_dict(),
        }


def make_probes(
    inputs: np.ndarray,
    reference: Callable[[np.ndarray], dict[str, np.ndarray]],
    *,
    model: str,
    input_name: str,
    count: int = 128,
    max_samples: int = 4,
    seed: int = 0,
) -> list[Probe]:
    """``count`` requests of 1 to ``max_samples`` rows drawn from ``inputs``, alternately JSON
    and binary, each with ``reference``'s outputs for exactly its rows."""
    rng = np.random.default_rng(seed)
    probes = []
    for index in range(count):
        rows = rng.choice(len(inputs), size=int(rng.integers(1, max_samples + 1)))
        x = np.ascontiguousarray(inputs[rows])
        binary = index % 2 == 1
        raw = infer_request("127.0.0.1", model, {input_name: x}, binary=binary)
        label = f"probe {index} ({'binary' if binary else 'json'}, {len(rows)} rows)"
        probes.append(Probe(raw, reference(x), label))
    return probes


def _check(probe: Probe, response: HttpResponse, rtol: float, atol: float) -> str | None:
    """None when ``response`` is the right answer to ``probe``, else what is wrong."""
    if response.status != 200:
        return f"{probe.label}: status {response.status} {response.body[:120]!r}"
    try:
        outputs = decode_response(response)
    except (ValueError, KeyError) as exc:
        return f"{probe.label}: undecodable response ({exc})"
    if set(outputs) != set(probe.expected):
        return f"{probe.label}: outputs {sorted(outputs)}, expected {sorted(probe.expected)}"
    for name, want in probe.expected.items():
        got = outputs[name]
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            return f"{probe.label}: output {name!r} is not this request's answer"
    return None


async def _connection(
    host: str,
    port: int,
    probes: Sequence[Probe],
    next_ticket: Callable[[], int | None],
    result: SoakResult,
    rtol: float,
    atol: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    parser = ResponseParser()
    try:
        while (ticket := next_ticket()) is not None:
            probe = probes[ticket % len(probes)]
            started = time.perf_counter()
            writer.write(probe.raw)
            responses: list[HttpResponse] = []
            while not responses:
                data = await reader.read(1 << 16)
                if not data:
                    raise HttpError(f"connection closed by the server at request {ticket}")
                responses = parser.feed(data)
            result.latencies_s.append(time.perf_counter() - started)
            (response,) = responses
            result.statuses[response.status] = result.statuses.get(response.status, 0) + 1
            problem = _check(probe, response, rtol, atol)
            if problem is not None:
                result.wrong_count += 1
                if len(result.wrong) < 10:
                    result.wrong.append(problem)
    finally:
        writer.close()


async def soak(
    host: str,
    port: int | Sequence[int],
    probes: Sequence[Probe],
    *,
    requests: int,
    concurrency: int = CONCURRENCY,
    offset: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    timeout_s: float = 300.0,
) -> SoakResult:
    """``requests`` requests over ``concurrency`` keep-alive connections, each checked.

    Connection i starts at probe ``offset + i``, so concurrent requests carry different inputs.
    Several ports (replicas of one server) take the connections in turn.
    """
    ports = [port] if isinstance(port, int) else list(port)
    if requests < 1 or concurrency < 1 or not probes:
        raise ValueError("requests, concurrency and probes must be positive")
    result = SoakResult(requests, {}, [], 0, [], 0.0)
    issued = 0

    def next_ticket() -> int | None:
        nonlocal issued
        if issued >= requests:
            return None
        issued += 1
        return offset + issued - 1

    started = time.perf_counter()
    tasks = [
        _connection(host, ports[i % len(ports)], probes, next_ticket, result, rtol, atol)
        for i in range(min(concurrency, requests))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout_s)
    except TimeoutError:
        raise HttpError(f"soak did not finish within {timeout_s} s") from None
    result.duration_s = time.perf_counter() - started
    return result


# -- the benchmark ------------------------------------------------------------------------------


def measure(ctx: Context) -> dict[str, Any]:
    import onnxruntime as ort

    from benchmarks.features import env_for
    from benchmarks.server_process import HOST, running_server

    bench = ctx.workspace.model(ARCH)
    repository = ctx.workspace.repository_of(NAME, [ARCH])
    input_name = bench.checkpoint.input.name
    session = ort.InferenceSession(str(bench.onnx_path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(output_names, {input_name: x}), strict=True))

    probes = make_probes(
        bench.inputs.numpy(), reference, model=bench.name, input_name=input_name, count=256
    )
    warmup = ctx.pick(3000, 500)
    phases, per_phase = ctx.pick((10, 10_000), (4, 500))
    log = ctx.work_dir / "logs" / f"{NAME}.log"
    rows = []
    total = SoakResult(0, {}, [], 0, [], 0.0)
    with running_server(repository, log, env=env_for(SERVER)) as server:
        asyncio.run(soak(HOST, server.port, probes, requests=warmup))
        rss_start = server.memory_kib()["VmRSS"]
        done = 0
        for phase in range(phases):
            run = asyncio.run(
                soak(HOST, server.port, probes, requests=per_phase, offset=phase * per_phase)
            )
            done += per_phase
            memory = server.memory_kib()
            rows.append(
                {
                    "requests_done": done,
                    "rss_mib": memory["VmRSS"] / 1024,
                    "peak_rss_mib": memory["VmHWM"] / 1024,
                    "throughput_rps": run.requests / run.duration_s,
                    "latency_ms": summarize_latencies(run.latencies_s).to_dict(),
                }
            )
            ctx.log(
                f"   {done} requests: {rows[-1]['throughput_rps']:.0f} req/s, "
                f"RSS {rows[-1]['rss_mib']:.1f} MiB, wrong {run.wrong_count}"
            )
            total.requests += run.requests
            total.duration_s += run.duration_s
            total.latencies_s += run.latencies_s
            total.wrong_count += run.wrong_count
            total.wrong += run.wrong[: 10 - len(total.wrong)]
            for status, count in run.statuses.items():
                total.statuses[status] = total.statuses.get(status, 0) + count
        rss_end = server.memory_kib()["VmRSS"]
    growth_mib = (rss_end - rss_start) / 1024
    failed = total.requests - total.ok
    return {
        "config": {
            "arch": ARCH,
            "server": SERVER,
            "concurrency": CONCURRENCY,
            "warmup_requests": warmup,
            "probes": len(probes),
            "probe_rows": "1 to 4",
            "bodies": "JSON and binary, alternating",
            "tolerance": {"rtol": RTOL, "atol": ATOL, "reference": "ONNX Runtime, same file"},
        },
        "total": total.to_dict(),
        "rss_after_warmup_mib": rss_start / 1024,
        "rss_growth_mib": growth_mib,
        "phases": rows,
        "targets": [
            Target(
                name=f"soak: {total.requests} verified requests at concurrency {CONCURRENCY}",
                goal="0 failed or wrong",
                value=float(failed),
                unit="failed or wrong",
                met=failed == 0,
            ).to_dict(),
            Target(
                name="soak: server RSS growth after warm-up",
                goal=f"< {RSS_GROWTH_TARGET_MIB:g} MiB",
                value=round(growth_mib, 1),
                unit="MiB",
                met=growth_mib < RSS_GROWTH_TARGET_MIB,
            ).to_dict(),
        ],
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    from benchmarks.charts import figure, save

    rows = result.get("phases") or []
    if not rows:
        return False
    fig, axes = figure(1, 2)
    rss_axis, rate_axis = axes[0]
    done = [r["requests_done"] for r in rows]
    rss_axis.plot(done, [r["rss_mib"] for r in rows], marker="o", label="VmRSS")
    rss_axis.axhline(result["rss_after_warmup_mib"], linestyle="--", label="after warm-up")
    rss_axis.set_xlabel("requests after warm-up")
    rss_axis.set_ylabel("server RSS (MiB)")
    rss_axis.legend()
    rate_axis.plot(done, [r["throughput_rps"] for r in rows], marker="o")
    rate_axis.set_xlabel("requests after warm-up")
    rate_axis.set_ylabel("requests/s in the phase")
    rate_axis.set_ylim(bottom=0)
    save(fig, path, f"Soak: {ARCH}, {CONCURRENCY} connections, every answer verified", result)
    return True
