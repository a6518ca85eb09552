"""Benchmark 6, GPU: the CUDA provider, when ONNX Runtime offers it; skipped with a reason
otherwise (the result file then says why and no chart is drawn).

Per model and batch size (1, 8, 64), interleaved: the CPU provider, the CUDA provider with
numpy in and out (host↔device copies every call), and the CUDA provider with IOBinding (input
already on the device, output left there). Then serving on CUDA: one sequential request at
batch 1 minus the bare CUDA ``session.run``, like the CPU overhead benchmark.

``NORMSERVE_BENCH_GPU_PROVIDER=CPUExecutionProvider`` runs the same code on the CPU to check the
script on a machine without a GPU (its figures are then not GPU figures and say so).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.bare import load_served_model
from benchmarks.bench_models import find_cifar_resnet
from benchmarks.charts import figure, save
from benchmarks.context import Context
from benchmarks.features import env_for, server_metadata, supports_binary
from benchmarks.http_client import HttpConnection
from benchmarks.probes import CallProbe, HttpProbe
from benchmarks.server_process import HOST, running_server
from benchmarks.stats import interleave, spread
from benchmarks.timing import block_mean, calls_per_block
from benchmarks.v2_payload import decode_response, infer_request
from normserve.export.sessions import Provider, make_session

NAME = "gpu"
CUDA = "CUDAExecutionProvider"
BATCH_SIZES = (1, 8, 64)
PROVIDER = os.environ.get("NORMSERVE_BENCH_GPU_PROVIDER", CUDA)


def _session(path: Path, provider: str) -> ort.InferenceSession:
    providers: list[Provider] = (
        [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
    )
    return make_session(path, "ORT_ENABLE_ALL", providers)


def _device(provider: str) -> str:
    return "cuda" if provider == CUDA else "cpu"


def _compute(ctx: Context, arch: str) -> dict[str, Any]:
    bench = ctx.workspace.model(arch)
    cpu = _session(bench.onnx_path, "CPUExecutionProvider")
    gpu = _session(bench.onnx_path, PROVIDER)
    input_name = bench.checkpoint.input.name
    outputs = [o.name for o in gpu.get_outputs()]
    device = _device(PROVIDER)
    rows = []
    for batch in BATCH_SIZES:
        x = bench.inputs[torch.arange(batch) % len(bench.inputs)].numpy()
        feed = {input_name: x}
        binding = gpu.io_binding()
        x_device = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
        binding.bind_ortvalue_input(input_name, x_device)
        for name in outputs:
            binding.bind_output(name, device, 0)

        def bound(b: Any = binding) -> None:
            gpu.run_with_iobinding(b)
            b.synchronize_outputs()

        expected = cpu.run(outputs, feed)[0]
        bound()
        got = binding.copy_outputs_to_cpu()[0]
        calls = {
            "cpu": lambda f=feed: cpu.run(outputs, f),
            "gpu": lambda f=feed: gpu.run(outputs, f),
            "gpu_iobinding": bound,
        }
        blocks = {k: calls_per_block(fn, ctx.pick(0.05, 0.02)) for k, fn in calls.items()}
        samples = interleave(
            {k: (lambda fn=fn, n=blocks[k]: block_mean(fn, n)) for k, fn in calls.items()},
            ctx.pick(9, 3),
        )
        rows.append(
            {
                "batch": batch,
                "ms_per_batch": {k: spread(v).scaled(1e3).to_dict() for k, v in samples.items()},
                "max_abs_vs_cpu": float(np.max(np.abs(got - expected))),
            }
        )
        ctx.log(
            f"   {arch} batch {batch}: "
            + ", ".join(f"{k} {v['median']:.3f} ms" for k, v in rows[-1]["ms_per_batch"].items())
        )
    return {"arch": arch, "batches": rows}


def _serving(ctx: Context, archs: list[str]) -> list[dict[str, Any]]:
    provider = "cuda" if PROVIDER == CUDA else "cpu"
    repository = ctx.workspace.repository_of(NAME, archs)
    env = env_for({"provider": provider, "log_level": "warning"})
    results = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            running_server(repository, ctx.work_dir / "logs" / "gpu.log", env=env)
        )
        conn = stack.enter_context(HttpConnection(HOST, server.port))
        binary = supports_binary(server_metadata(HOST, server.port))
        for arch in archs:
            bench = ctx.workspace.model(arch)
            loaded = load_served_model(repository / bench.name / "1", {"provider": provider})
            session = loaded.session
            feed = {bench.checkpoint.input.name: bench.inputs[:1].numpy()}
            outputs = [o.name for o in session.get_outputs()]
            request = infer_request(f"{HOST}:{server.port}", bench.name, feed, binary=binary)
            served = decode_response(conn.request(request))[outputs[0]]
            if not np.allclose(served, session.run(outputs, feed)[0], rtol=1e-4, atol=1e-5):
                raise RuntimeError(f"{arch}: served output differs from the bare session's")
            probes = {
                "bare": CallProbe(lambda s=session, f=feed, o=outputs: s.run(o, f)),
                "served": HttpProbe(conn, request),
            }
            for probe in probes.values():
                probe.block(20)
            samples = interleave(
                {k: (lambda p=p: p.block(ctx.pick(200, 30))) for k, p in probes.items()},
                ctx.pick(9, 3),
            )
            overhead = [s - b for s, b in zip(samples["served"], samples["bare"], strict=True)]
            results.append(
                {
                    "arch": arch,
                    "body": "binary" if binary else "json",
                    "ms": {k: spread(v).scaled(1e3).to_dict() for k, v in samples.items()},
                    "overhead_ms": spread(overhead).scaled(1e3).to_dict(),
                    "providers": list(loaded.providers),
                }
            )
    return results


def measure(ctx: Context) -> dict[str, Any]:
    available = ort.get_available_providers()
    if PROVIDER not in available:
        reason = (
            f"skipped: onnxruntime {ort.__version__} offers {available}, not {PROVIDER} "
            "(install onnxruntime-gpu on a machine with CUDA to run it)"
        )
        ctx.log(f"   {reason}")
        return {"skipped": reason, "available_providers": available}
    archs = ["digits_cnn"] + ([r] if (r := find_cifar_resnet()) else [])
    compute = [_compute(ctx, arch) for arch in archs]
    serving = _serving(ctx, archs)
    return {
        "provider": PROVIDER,
        "note": "" if PROVIDER == CUDA else "dry run on the CPU: not GPU figures",
        "available_providers": available,
        "compute": compute,
        "serving": serving,
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    if result.get("skipped"):
        return False
    compute = result["compute"]
    fig, axes = figure(1, len(compute), width=5.5)
    keys = ("cpu", "gpu", "gpu_iobinding")
    for ax, arch in zip(axes[0], compute, strict=True):
        for i, key in enumerate(keys):
            xs = [j + (i - 1) * 0.27 for j in range(len(arch["batches"]))]
            ys = [row["ms_per_batch"][key]["median"] for row in arch["batches"]]
            ax.bar(xs, ys, 0.27, label=key.replace("_", " + "))
        ax.set_xticks(range(len(arch["batches"])))
        ax.set_xticklabels([f"batch {row['batch']}" for row in arch["batches"]])
        ax.set_yscale("log")
        ax.set_ylabel("ms per batch (median)")
        ax.set_title(arch["arch"])
        ax.legend(fontsize=8)
    save(fig, path, f"GPU: {result['provider']} vs CPU, with and without IOBinding", result)
    return True
