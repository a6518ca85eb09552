"""The load every server gets, and what is read from each: the project's own verified client.

Per server and round: a closed loop of ``concurrency`` keep-alive connections sending V2 JSON
requests of 1 to 4 rows (``benchmarks.soak``: every answer is checked against the reference
outputs of its own input), first unrecorded to warm up and estimate the rate, then for about
``duration_s``; then sequential batch-1 requests on one connection (the same client at
concurrency 1, answers checked too). The server's CPU is its process tree's ``utime + stime``
read before and after the closed loop; the client's is this thread's CPU over the same span (on
a 2-core machine the client shares the cores with the server). Servers are measured in rounds,
the order rotated each round, so a burst of load from elsewhere hits all of them alike.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.process import Contender
from benchmarks.server_process import HOST
from benchmarks.soak import Probe, soak
from benchmarks.stats import spread, summarize_latencies
from benchmarks.v2_payload import infer_request
from normserve.model_repository import ModelConfig, numpy_dtype

__all__ = ["LoadPlan", "Workload", "compare", "make_workload", "measure_once"]


@dataclass(frozen=True)
class LoadPlan:
    rounds: int = 3
    concurrency: int = 64
    max_rows: int = 4
    duration_s: float = 8.0  # of the recorded closed loop, estimated from the warm-up's rate
    warmup_requests: int = 1000
    min_requests: int = 500
    sequential_requests: int = 2000
    timeout_s: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Workload:
    model: str
    probes: list[Probe]  # 1 to max_rows rows each, JSON bodies
    singles: list[Probe]  # batch 1, JSON bodies


def _random_rows(spec_shape: tuple[int, ...], datatype: str, rows: int, rng: Any) -> np.ndarray:
    if any(d < 0 for d in spec_shape[1:]):
        raise ValueError(f"shape {spec_shape}: only the batch axis may be dynamic here")
    shape = (rows, *spec_shape[1:])
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return rng.uniform(0.0, 16.0, size=shape).astype(dtype)  # digits' pixel range
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)


def make_workload(
    config: ModelConfig, onnx_path: Path, *, count: int = 256, max_rows: int = 4, seed: int = 0
) -> Workload:
    """``count`` multi-row probes and ``count`` single-row ones, each with the outputs ONNX
    Runtime gives for its own rows in this process (the reference every answer is checked by)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in config.outputs]
    rng = np.random.default_rng(seed)

    def probe(rows: int, label: str) -> Probe:
        feed = {s.name: _random_rows(s.shape, s.datatype, rows, rng) for s in config.inputs}
        expected = dict(zip(names, session.run(names, feed), strict=True))
        raw = infer_request(HOST, config.name, feed, binary=False)
        return Probe(raw, expected, f"{label} ({rows} rows)")

    probes = [probe(int(rng.integers(1, max_rows + 1)), f"probe {i}") for i in range(count)]
    singles = [probe(1, f"single {i}") for i in range(count)]
    return Workload(config.name, probes, singles)


def _verified(
    port: int | Sequence[int],
    probes: Sequence[Probe],
    requests: int,
    concurrency: int,
    offset: int,
    timeout_s: float,
) -> tuple[Any, float]:
    started = time.thread_time()
    result = asyncio.run(
        soak(
            HOST,
            port,
            probes,
            requests=requests,
            concurrency=concurrency,
            offset=offset,
            timeout_s=timeout_s,
        )
    )
    return result, time.thread_time() - started


def measure_once(contender: Contender, workload: Workload, plan: LoadPlan, offset: int = 0) -> dict:
    """One round for one server: warm-up, the recorded closed loop, sequential batch 1."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    warm, _ = _verified(
        contender.load_ports,
        workload.probes,
        plan.warmup_requests,
        plan.concurrency,
        offset,
        plan.timeout_s,
    )
    rate = warm.requests / warm.duration_s if warm.duration_s > 0 else 0.0
    requests = max(plan.min_requests, int(rate * plan.duration_s))
    cpu_before = contender.cpu_seconds()
    run, client_cpu = _verified(
        contender.load_ports,
        workload.probes,
        requests,
        plan.concurrency,
        offset + plan.warmup_requests,
        plan.timeout_s,
    )
    server_cpu = contender.cpu_seconds() - cpu_before
    seq, _ = _verified(
        contender.port, workload.singles, plan.sequential_requests, 1, offset, plan.timeout_s
    )
    latency = summarize_latencies(run.latencies_s).to_dict()
    return {
        "load_average_before": load_before,
        "requests": run.requests,
        "duration_s": run.duration_s,
        "throughput_rps": run.requests / run.duration_s,
        "latency_ms": latency,
        "sequential_latency_ms": summarize_latencies(seq.latencies_s).to_dict(),
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": 1e3 * server_cpu / run.requests,
        "client_cpu_us_per_request": 1e6 * client_cpu / run.requests,
        "verified": warm.requests + run.requests + seq.requests,
        "wrong": warm.wrong_count + run.wrong_count + seq.wrong_count,
        "wrong_examples": (warm.wrong + run.wrong + seq.wrong)[:5],
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def over(get: Callable[[dict[str, Any]], float]) -> dict[str, float | int]:
        return spread([get(r) for r in rounds]).to_dict()

    return {
        "throughput_rps": over(lambda r: r["throughput_rps"]),
        "p50_ms": over(lambda r: r["latency_ms"]["p50"]),
        "p99_ms": over(lambda r: r["latency_ms"]["p99"]),
        "sequential_p50_ms": over(lambda r: r["sequential_latency_ms"]["p50"]),
        "server_cpu_ms_per_request": over(lambda r: r["server_cpu_ms_per_request"]),
        "client_cpu_us_per_request": over(lambda r: r["client_cpu_us_per_request"]),
        "verified": sum(r["verified"] for r in rounds),
        "wrong": sum(r["wrong"] for r in rounds),
        "wrong_examples": [e for r in rounds for e in r["wrong_examples"]][:5],
        "load_average_median": statistics.median(r["load_average_before"][0] for r in rounds),
    }


def compare(
    contenders: Sequence[Contender],
    workload: Workload,
    plan: LoadPlan,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every contender measured ``plan.rounds`` times, interleaved, the order rotated each round;
    the medians over rounds (with min and max) and every round's figures."""
    if not contenders:
        raise ValueError("nothing to compare")
    rounds: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
    orders = []
    for index in range(plan.rounds):
        shift = index % len(contenders)
        order = [*contenders[shift:], *contenders[:shift]]
        orders.append([c.name for c in order])
        for contender in order:
            row = measure_once(contender, workload, plan, offset=index * 7919)
            rounds[contender.name].append(row)
            log(
                f"   round {index + 1} {contender.name}: {row['throughput_rps']:.0f} req/s, "
                f"p50 {row['latency_ms']['p50']:.2f} p99 {row['latency_ms']['p99']:.2f} ms, "
                f"sequential p50 {row['sequential_latency_ms']['p50']:.2f} ms, server CPU "
                f"{row['server_cpu_ms_per_request']:.3f} ms/req, wrong {row['wrong']}, "
                f"load {row['load_average_before'][0]}"
            )
    return {
        "orders": orders,
        "servers": {
            c.name: {"summary": _summary(rounds[c.name]), "rounds": rounds[c.name]}
            for c in contenders
        },
    }
