"""Benchmark 1, model compute: eager PyTorch vs ONNX Runtime on the folded export vs an unfolded
export, at ORT_DISABLE_ALL and ORT_ENABLE_ALL, batch sizes 1, 8 and 64, for every registry
architecture, with the numerical differences of each against eager float32 and float64.

All five alternatives of one (architecture, batch) are timed interleaved: each round times one
block of calls of each, in a rotating order.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from benchmarks.bench_models import export_unfolded
from benchmarks.charts import COLORS, figure, save
from benchmarks.context import Context
from benchmarks.stats import interleave, spread
from benchmarks.timing import block_mean, calls_per_block
from normserve.errors import first_line
from normserve.export.audit import census, ort_optimized_census
from normserve.export.comparison import Tolerance, compare
from normserve.export.onnx_export import DEFAULT_OPSET
from normserve.export.sessions import make_session
from normserve.models.registry import list_architectures

NAME = "compute"
BATCH_SIZES = (1, 8, 64)
LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL")
VARIANTS = (
    "eager",
    "folded/ORT_DISABLE_ALL",
    "folded/ORT_ENABLE_ALL",
    "unfolded/ORT_DISABLE_ALL",
    "unfolded/ORT_ENABLE_ALL",
)
LABELS = {
    "eager": "eager PyTorch",
    "folded/ORT_DISABLE_ALL": "ORT folded, DISABLE_ALL",
    "folded/ORT_ENABLE_ALL": "ORT folded, ENABLE_ALL",
    "unfolded/ORT_DISABLE_ALL": "ORT unfolded (BN kept), DISABLE_ALL",
    "unfolded/ORT_ENABLE_ALL": "ORT unfolded (BN kept), ENABLE_ALL",
}


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _graph_facts(model_bytes: bytes) -> dict[str, Any]:
    exported = census(onnx.load_from_string(model_bytes))
    optimized = ort_optimized_census(model_bytes)
    return {
        "nodes": sum(exported.values()),
        "batch_norm_nodes": exported.get("BatchNormalization", 0),
        "nodes_after_ort_enable_all": sum(optimized.values()),
        "batch_norm_nodes_after_ort_enable_all": optimized.get("BatchNormalization", 0),
        "bytes": len(model_bytes),
    }


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))


def _measure_arch(ctx: Context, arch: str) -> dict[str, Any]:
    bench = ctx.workspace.model(arch)
    checkpoint = bench.checkpoint
    model = bench.eval_model()
    model64 = copy.deepcopy(model).double()
    input_name, output_name = checkpoint.input.name, checkpoint.output_name
    graphs = {
        "folded": bench.onnx_path.read_bytes(),
        "unfolded": export_unfolded(
            model,
            bench.inputs[:2],
            input_name=input_name,
            output_name=output_name,
            opset=DEFAULT_OPSET,
        ),
    }
    sessions = {
        f"{graph}/{level}": make_session(data, level)
        for graph, data in graphs.items()
        for level in LEVELS
    }
    tolerance = Tolerance()
    rounds = ctx.pick(9, 3)
    target_s = ctx.pick(0.06, 0.02)
    per_batch = []
    for batch in BATCH_SIZES:
        x = bench.inputs[torch.arange(batch) % len(bench.inputs)].contiguous()
        feed = {input_name: x.numpy()}
        with torch.inference_mode():
            eager_out = model(x).numpy()
            ref64 = model64(x.double()).numpy()

        def eager(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model(x)

        calls: dict[str, Any] = {"eager": eager}
        numerics: dict[str, Any] = {
            "eager": {"vs_fp64_max_abs": _finite(_max_abs(eager_out, ref64))},
        }
        for key, session in sessions.items():
            calls[key] = lambda s=session, f=feed: s.run(None, f)
            (out,) = session.run([output_name], feed)
            # The export's proof rule (error vs float64 within K x eager's + a floor).
            proof = compare([out], [eager_out], [ref64], tolerance, eager_out.dtype)
            gap = np.abs(out.astype(np.float64) - eager_out.astype(np.float64))
            numerics[key] = {
                "vs_eager_fp32_max_abs": _finite(float(gap.max(initial=0.0))),
                "vs_eager_fp32_max_rel": _finite(
                    float((gap / np.maximum(np.abs(eager_out), 1e-30)).max(initial=0.0))
                ),
                "vs_fp64_max_abs": _finite(proof.error),
                "within_tolerance": proof.ok,
            }
        blocks = {key: calls_per_block(fn, target_s) for key, fn in calls.items()}
        samples = interleave(
            {key: (lambda fn=fn, k=blocks[key]: block_mean(fn, k)) for key, fn in calls.items()},
            rounds,
        )
        timings = {key: spread(values).scaled(1e3).to_dict() for key, values in samples.items()}
        per_batch.append(
            {
                "batch": batch,
                "ms_per_batch": timings,
                "calls_per_block": blocks,
                "numerics": numerics,
            }
        )
        fastest = min(timings, key=lambda k: timings[k]["median"])
        ctx.log(
            f"   {arch} batch {batch}: "
            + ", ".join(f"{k} {timings[k]['median']:.3f} ms" for k in VARIANTS)
            + f"  (fastest: {fastest})"
        )
    return {
        "arch": arch,
        "input_shape": list(checkpoint.input.shape),
        "inputs": bench.inputs_kind,
        "graphs": {graph: _graph_facts(data) for graph, data in graphs.items()},
        "tolerance": tolerance.to_dict(),
        "batches": per_batch,
    }


def measure(ctx: Context) -> dict[str, Any]:
    archs = list_architectures()
    ctx.log(f"   architectures: {', '.join(archs)}")
    results, failures = [], []
    for arch in archs:
        try:
            results.append(_measure_arch(ctx, arch))
        except Exception as exc:  # one architecture failing to export must not hide the others
            first = first_line(exc, default="")
            ctx.log(f"   {arch}: FAILED: {type(exc).__name__}: {first}")
            failures.append({"arch": arch, "error": f"{type(exc).__name__}: {first}"})
    return {
        "config": {
            "architectures": archs,
            "batch_sizes": list(BATCH_SIZES),
            "variants": {k: LABELS[k] for k in VARIANTS},
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: active)"),
            "ort_session": "export.sessions.make_session: default intra-op threads, CPU provider",
            "method": "per round one block of back-to-back calls per variant (mean per call), "
            "rounds interleaved with a rotating order; median and min-max over rounds",
            "weights": "seeded random weights, BN statistics calibrated on dataset inputs",
        },
        "architectures": results,
        "failures": failures,
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    archs = result["architectures"]
    if not archs:
        return False
    cols = min(3, len(archs))
    rows = -(-len(archs) // cols)
    fig, axes = figure(rows, cols, width=5.5)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(archs) :]:
        ax.set_visible(False)
    width = 0.8 / len(VARIANTS)
    for ax, arch in zip(flat, archs, strict=False):
        for i, key in enumerate(VARIANTS):
            xs, ys, lo, hi = [], [], [], []
            for j, row in enumerate(arch["batches"]):
                t = row["ms_per_batch"][key]
                per_sample = 1e3 / row["batch"]  # ms per batch → µs per sample
                xs.append(j + (i - (len(VARIANTS) - 1) / 2) * width)
                ys.append(t["median"] * per_sample)
                lo.append((t["median"] - t["min"]) * per_sample)
                hi.append((t["max"] - t["median"]) * per_sample)
            ax.bar(xs, ys, width, yerr=[lo, hi], label=LABELS[key], color=COLORS[key], capsize=2)
        ax.set_xticks(range(len(arch["batches"])))
        ax.set_xticklabels([f"batch {row['batch']}" for row in arch["batches"]])
        ax.set_yscale("log")
        ax.set_ylabel("µs per sample (median, min-max)")
        ax.set_title(arch["arch"])
        ax.grid(axis="y", which="both", alpha=0.3)
    flat[0].legend(fontsize=7)
    save(
        fig, path, "Model compute: eager PyTorch vs ONNX Runtime, folded vs unfolded export", result
    )
    return True
