"""Benchmark 3, throughput and latency against concurrency: closed-loop clients (1 to 64
keep-alive connections, batch-1 requests) against the server with dynamic batching on and off,
beside bare ONNX Runtime throughput at a batch as large as the concurrency.

For each concurrency the alternatives (each batching mode, bare ORT) are interleaved over
rounds. The server's own statistics give the mean batch it ran and where a request's time went.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from benchmarks.bare import load_served_model
from benchmarks.bench_models import find_cifar_resnet
from benchmarks.charts import COLORS, figure, save
from benchmarks.context import Context, Target
from benchmarks.features import (
    BatchingMode,
    batching_modes,
    env_for,
    server_metadata,
    server_stats,
    settings_defaults,
    stats_delta,
    supports_binary,
)
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.server_process import HOST, ServerProcess, running_server
from benchmarks.stats import interleave, spread, summarize_latencies
from benchmarks.timing import block_mean, calls_per_block
from benchmarks.v2_payload import infer_request

NAME = "throughput"
DIGITS = "digits_cnn"
TARGET_RATIO = 0.8
TARGET_CONCURRENCY = 32
SERVER = {"provider": "cpu", "log_level": "warning"}
# The default batcher with ONNX Runtime on one intra-op thread: on a 2-core machine the event
# loop needs a core of its own (the default pool spins on both).
ONE_THREAD = "on, intra_op_threads=1"


def _measure_arch(
    ctx: Context, arch: str, servers: dict[str, ServerProcess], repos: dict[str, Path], binary: bool
) -> dict[str, Any]:
    bench = ctx.workspace.model(arch)
    input_name = bench.checkpoint.input.name
    loaded = load_served_model(next(iter(repos.values())) / bench.name / "1", {"provider": "cpu"})
    session = loaded.session
    outputs = [o.name for o in session.get_outputs()]
    one = {input_name: bench.inputs[:1].numpy()}
    levels = ctx.pick((1, 2, 4, 8, 16, 32, 64), (1, 8, 32))
    duration_s, warmup_s = ctx.pick(2.0, 0.6), ctx.pick(0.5, 0.2)
    rounds = ctx.pick(2, 1)
    rows = []
    for level in levels:
        batch = bench.inputs[torch.arange(level) % len(bench.inputs)].numpy()
        feed = {input_name: batch}

        def bare(feed: dict[str, Any] = feed) -> object:
            return session.run(outputs, feed)

        calls = calls_per_block(bare, ctx.pick(0.5, 0.15))
        runs: dict[str, list[LoadResult]] = {mode: [] for mode in servers}
        stats: dict[str, list[dict[str, Any]]] = {mode: [] for mode in servers}

        def load(
            mode: str,
            level: int = level,
            runs: dict[str, list[LoadResult]] = runs,
            stats: dict[str, list[dict[str, Any]]] = stats,
        ) -> float:
            server = servers[mode]
            request = infer_request(f"{HOST}:{server.port}", bench.name, one, binary=binary)
            before = server_stats(HOST, server.port, bench.name)
            cpu_before = server.cpu_seconds()
            result = run_load(
                HOST,
                server.port,
                request,
                concurrency=level,
                duration_s=duration_s,
                warmup_s=warmup_s,
            )
            cpu_after = server.cpu_seconds()
            after = server_stats(HOST, server.port, bench.name)
            runs[mode].append(result)
            delta = stats_delta(before, after)
            answered = max(1, delta.get("requests") or result.completed)
            delta["server_cpu_ms_per_request"] = {
                k: 1e3 * (cpu_after[k] - cpu_before[k]) / answered for k in cpu_after
            }
            stats[mode].append(delta)
            return result.throughput

        alternatives = {mode: (lambda m=mode: load(m)) for mode in servers}
        alternatives["bare"] = lambda b=bare, k=calls, n=level: n / block_mean(b, k)
        samples = interleave(alternatives, rounds)
        row: dict[str, Any] = {
            "concurrency": level,
            "bare_samples_per_s": spread(samples["bare"]).to_dict(),
            "modes": {},
        }
        for mode in servers:
            latencies = [t for r in runs[mode] for t in r.latencies_s]
            row["modes"][mode] = {
                "requests_per_s": spread(samples[mode]).to_dict(),
                "latency_ms": summarize_latencies(latencies).to_dict(),
                "errors": sum(r.errors for r in runs[mode]),
                "client_cpu_us_per_request": sum(r.client_cpu_s for r in runs[mode])
                * 1e6
                / max(1, sum(r.completed for r in runs[mode])),
                "server": stats[mode][-1],
                "vs_bare": spread(samples[mode]).median / spread(samples["bare"]).median,
            }
        rows.append(row)
        ctx.log(
            f"   {arch} c={level}: bare {row['bare_samples_per_s']['median']:.0f}/s; "
            + "; ".join(
                f"{m} {v['requests_per_s']['median']:.0f}/s (x{v['vs_bare']:.2f} bare, "
                f"p50 {v['latency_ms']['p50']:.2f} p99 {v['latency_ms']['p99']:.2f} ms, "
                f"batch {v['server'].get('mean_batch') or 0:.1f}, server CPU/req "
                f"loop {v['server']['server_cpu_ms_per_request']['main']:.2f} + "
                f"other {v['server']['server_cpu_ms_per_request']['other']:.2f} ms)"
                for m, v in row["modes"].items()
            )
        )
    return {
        "arch": arch,
        "model": bench.name,
        "levels": rows,
        "server_memory_kib": {mode: s.memory_kib() for mode, s in servers.items()},
    }


def measure(ctx: Context) -> dict[str, Any]:
    resnet = find_cifar_resnet()
    archs = ([resnet] if resnet else []) + ([DIGITS] if not ctx.quick or not resnet else [])
    modes = batching_modes()
    variants = dict(modes.modes)
    if "on" in variants and "intra_op_threads" in settings_defaults():
        on = variants["on"]
        variants[ONE_THREAD] = BatchingMode({**on.settings, "intra_op_threads": 1}, on.model_json)
    with contextlib.ExitStack() as stack:
        repos, servers = {}, {}
        for index, (mode, spec) in enumerate(variants.items()):
            repos[mode] = ctx.workspace.repository_of(f"{NAME}-{index}", archs, spec.model_json)
            env = env_for({**SERVER, **spec.settings})
            log = ctx.work_dir / "logs" / f"{NAME}-{index}.log"
            servers[mode] = stack.enter_context(running_server(repos[mode], log, env=env))
        first = next(iter(servers.values()))
        binary = supports_binary(server_metadata(HOST, first.port))
        results = [_measure_arch(ctx, arch, servers, repos, binary) for arch in archs]
    targets = []
    if resnet:
        row = next(
            (r for r in results[0]["levels"] if r["concurrency"] == TARGET_CONCURRENCY), None
        )
        if row is not None and "on" in row["modes"]:
            ratio = row["modes"]["on"]["vs_bare"]
            targets.append(
                Target(
                    name=f"{resnet} throughput, batching on, {TARGET_CONCURRENCY} clients",
                    goal=f"≥ {TARGET_RATIO}x bare ORT at batch {TARGET_CONCURRENCY}",
                    value=round(ratio, 3),
                    unit="x bare",
                    met=ratio >= TARGET_RATIO,
                ).to_dict()
            )
    return {
        "config": {
            "server": SERVER,
            "batching": {k: v.to_dict() for k, v in variants.items()},
            "batching_how": modes.how,
            "body": "binary" if binary else "json",
            "request_batch": 1,
            "method": "closed loop: each connection sends its next request when the previous "
            "answer is complete; per concurrency, each mode and bare ORT interleaved over rounds; "
            "bare = samples/s of session.run at batch = concurrency in the benchmark process",
        },
        "models": results,
        "targets": targets,
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    models = result["models"]
    if not models:
        return False
    fig, axes = figure(2, len(models), width=6.0, height=3.8)
    for col, model in enumerate(models):
        levels = [r["concurrency"] for r in model["levels"]]
        top, bottom = axes[0][col], axes[1][col]
        bare = [r["bare_samples_per_s"]["median"] for r in model["levels"]]
        top.plot(levels, bare, "o--", color=COLORS["bare"], label="bare ORT, batch = concurrency")
        for mode in model["levels"][0]["modes"]:
            rps = [r["modes"][mode]["requests_per_s"] for r in model["levels"]]
            top.errorbar(
                levels,
                [x["median"] for x in rps],
                yerr=[[x["median"] - x["min"] for x in rps], [x["max"] - x["median"] for x in rps]],
                fmt="o-",
                color=COLORS.get(mode),
                label=f"served, batching {mode}",
                capsize=2,
            )
            lat = [r["modes"][mode]["latency_ms"] for r in model["levels"]]
            bottom.plot(levels, [x["p50"] for x in lat], "o-", color=COLORS.get(mode))
            bottom.plot(
                levels, [x["p99"] for x in lat], "s:", color=COLORS.get(mode), label=f"{mode} p99"
            )
            bottom.plot([], [], "o-", color=COLORS.get(mode), label=f"{mode} p50")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels)
            ax.set_xticklabels([str(x) for x in levels])
            ax.grid(alpha=0.3)
        top.set_title(f"{model['arch']}: batch-1 requests")
        top.set_ylabel("requests (samples) / s")
        top.legend(fontsize=7)
        bottom.set_yscale("log")
        bottom.set_xlabel("concurrent clients")
        bottom.set_ylabel("latency, ms")
        bottom.legend(fontsize=7, ncol=2)
    save(fig, path, "Throughput and latency against concurrency (dynamic batching on/off)", result)
    return True
