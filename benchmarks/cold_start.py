"""Benchmark 5, cold start and memory: ``normserve serve`` from process start to the first 200
from ``/v2/health/ready`` (interpreter, imports, repository load, session creation, warm-up,
golden probe, socket bind), and the serving process's resident memory at ready and after
traffic (peak, ``VmHWM``).

Interleaved per round with the two floors under it: a bare ``python -c pass`` and a process that
only imports what ``serve`` imports. One ``python -X importtime`` run names the heaviest imports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_models import find_cifar_resnet
from benchmarks.charts import figure, save
from benchmarks.context import Context, Target
from benchmarks.features import env_for
from benchmarks.http_client import HttpConnection
from benchmarks.server_process import HOST, running_server
from benchmarks.stats import interleave, spread
from benchmarks.v2_payload import infer_request

NAME = "cold_start"
TARGET_READY_S = 1.0
TARGET_RSS_MIB = 150.0
SERVER = {"provider": "cpu", "log_level": "warning"}
SERVE_IMPORTS = "import normserve.cli, normserve.service.http.server, normserve.service.app"
DEFAULT_REPOSITORY = Path(os.environ.get("NORMSERVE_BENCH_REPOSITORY", "model_repository"))


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _import_seconds() -> float:
    """Seconds ``serve``'s imports take, timed inside a fresh interpreter (no exit cost)."""
    code = f"import time; t = time.perf_counter(); {SERVE_IMPORTS}; print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(done.stdout.strip())


def _heaviest_imports(top: int = 12) -> list[dict[str, Any]]:
    """``python -X importtime`` of serve's imports, self time summed per top-level package."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", SERVE_IMPORTS],
        check=True,
        capture_output=True,
        text=True,
    )
    totals: dict[str, int] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if match:
            root = match.group(3).split(".")[0]
            totals[root] = totals.get(root, 0) + int(match.group(1))
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": name, "self_ms": us / 1e3} for name, us in ranked]


def _default_repository(ctx: Context) -> tuple[Path, str]:
    if any(DEFAULT_REPOSITORY.glob("*/*/model.onnx")):
        return DEFAULT_REPOSITORY, f"{DEFAULT_REPOSITORY} (make model: the trained default)"
    ctx.log(f"   {DEFAULT_REPOSITORY} holds no model: using a synthetic digits_cnn export")
    return ctx.workspace.repository_of(NAME, ["digits_cnn"]), "synthetic digits_cnn export"


def _serve_once(
    ctx: Context, repository: Path, label: str, records: dict[str, list[dict[str, Any]]]
) -> float:
    log = ctx.work_dir / "logs" / f"{NAME}-{label}.log"
    with running_server(repository, log, env=env_for(SERVER)) as server:
        at_ready = server.memory_kib()
        model_dir = next(p for p in sorted(repository.iterdir()) if p.is_dir())
        request = _first_request(ctx, repository, model_dir.name, server.port)
        with HttpConnection(HOST, server.port) as conn:
            for _ in range(ctx.pick(500, 100)):
                if conn.request(request).status != 200:
                    raise RuntimeError("inference failed during the memory probe")
        after = server.memory_kib()
        records[label].append(
            {
                "ready_s": server.ready_s,
                "rss_at_ready_mib": at_ready["VmRSS"] / 1024,
                "peak_rss_at_ready_mib": at_ready["VmHWM"] / 1024,
                "rss_after_traffic_mib": after["VmRSS"] / 1024,
                "peak_rss_after_traffic_mib": after["VmHWM"] / 1024,
            }
        )
        return server.ready_s


def _first_request(ctx: Context, repository: Path, model: str, port: int) -> bytes:
    """A batch-1 binary (or JSON) request for the model, shaped from its ``model.json``."""
    import json

    import numpy as np

    from benchmarks.features import server_metadata, supports_binary

    config = json.loads(next((repository / model).glob("*/model.json")).read_text())
    spec = config["inputs"][0]
    x = np.zeros([1, *spec["shape"][1:]], dtype=np.float32)
    binary = supports_binary(server_metadata(HOST, port))
    return infer_request(f"{HOST}:{port}", model, {spec["name"]: x}, binary=binary)


def measure(ctx: Context) -> dict[str, Any]:
    default_repo, default_label = _default_repository(ctx)
    repos = {"default": default_repo}
    resnet = find_cifar_resnet()
    if resnet:
        repos[resnet] = ctx.workspace.repository_of(f"{NAME}-{resnet}", [resnet])
    records: dict[str, list[dict[str, Any]]] = {label: [] for label in repos}
    python = [sys.executable, "-c", "pass"]
    alternatives: dict[str, Any] = {
        "python -c pass": lambda: _wall(python),
        "serve's imports (in process)": _import_seconds,
    }
    for label, repo in repos.items():
        alternatives[f"ready: {label}"] = lambda r=repo, lab=label: _serve_once(
            ctx, r, lab, records
        )
    samples = interleave(alternatives, ctx.pick(7, 2))
    seconds = {k: spread(v).to_dict() for k, v in samples.items()}
    memory = {
        label: {
            key: spread([r[key] for r in rows]).to_dict() for key in rows[0] if key != "ready_s"
        }
        for label, rows in records.items()
    }
    heaviest = _heaviest_imports()
    ready = seconds["ready: default"]["median"]
    peak = memory["default"]["peak_rss_after_traffic_mib"]["median"]
    ctx.log(
        "   "
        + ", ".join(f"{k} {v['median']:.3f} s" for k, v in seconds.items())
        + f"; default peak RSS {peak:.0f} MiB"
    )
    return {
        "config": {
            "default_repository": default_label,
            "server": SERVER,
            "ready": "Popen to the first 200 from /v2/health/ready, polled every 2 ms",
            "traffic": f"{ctx.pick(500, 100)} sequential batch-1 requests after ready",
        },
        "seconds": seconds,
        "memory_mib": memory,
        "heaviest_imports": heaviest,
        "targets": [
            Target(
                name="cold start to ready, default model",
                goal=f"≤ {TARGET_READY_S} s",
                value=round(ready, 3),
                unit="s",
                met=ready <= TARGET_READY_S,
            ).to_dict(),
            Target(
                name="serving process peak RSS, default model, after traffic",
                goal=f"≤ {TARGET_RSS_MIB:.0f} MiB",
                value=round(peak, 1),
                unit="MiB",
                met=peak <= TARGET_RSS_MIB,
            ).to_dict(),
        ],
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    fig, axes = figure(1, 2, width=5.5)
    left, right = axes[0]
    seconds = result["seconds"]
    keys = list(seconds)
    medians = [seconds[k]["median"] for k in keys]
    left.barh(
        range(len(keys)),
        medians,
        xerr=[
            [seconds[k]["median"] - seconds[k]["min"] for k in keys],
            [seconds[k]["max"] - seconds[k]["median"] for k in keys],
        ],
        color=["#c7c7c7", "#9edae5", "#1f77b4", "#17becf"][: len(keys)],
        capsize=3,
    )
    for i, k in enumerate(keys):
        left.annotate(f" {medians[i]:.2f} s", (seconds[k]["max"], i), va="center", fontsize=8)
    left.axvline(TARGET_READY_S, ls="--", color="k", lw=0.8)
    left.set_yticks(range(len(keys)))
    left.set_yticklabels(keys, fontsize=8)
    left.set_xlabel("seconds from process start (median, min-max)")
    left.set_title("start to ready (dashed: 1 s target)")
    memory = result["memory_mib"]
    labels = list(memory)
    for j, (key, name) in enumerate(
        (("rss_at_ready_mib", "RSS at ready"), ("peak_rss_after_traffic_mib", "peak after traffic"))
    ):
        values = [memory[label][key]["median"] for label in labels]
        right.bar([i + (j - 0.5) * 0.38 for i in range(len(labels))], values, 0.38, label=name)
        for i, v in enumerate(values):
            right.annotate(
                f"{v:.0f}", (i + (j - 0.5) * 0.38, v), ha="center", va="bottom", fontsize=8
            )
    right.axhline(TARGET_RSS_MIB, ls="--", color="k", lw=0.8)
    right.set_xticks(range(len(labels)))
    right.set_xticklabels(labels)
    right.set_ylabel("MiB")
    right.set_title("serving process memory (dashed: 150 MiB target)")
    right.legend(fontsize=8)
    save(fig, path, "Cold start and memory of normserve serve", result)
    return True
