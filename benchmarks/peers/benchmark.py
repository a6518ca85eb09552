"""The peers benchmark: normserve beside Triton and KServe on the same machine, the same model
file and the same verified load (``benchmarks.peers.load``), in rotated rounds.

The model is the default digits model ``make model`` exports into ``$NORMSERVE_BENCH_REPOSITORY``
(``model_repository``), or a synthetic digits_cnn export when there is none. Every server gets
the one ONNX file: normserve from a private repository holding only that entry, Triton through a
generated Python-backend model, KServe through its Python server. ``NORMSERVE_BENCH_PEERS``
picks the peers (default ``triton,kserve``; empty for normserve alone); a peer that cannot be
installed or started is reported with its error and the others still run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.context import Context, Target
from benchmarks.features import env_for, server_metadata, settings_defaults
from benchmarks.peers.kserve import kserve_command, kserve_spec
from benchmarks.peers.load import LoadPlan, compare, make_workload
from benchmarks.peers.process import Contender, running_peer
from benchmarks.peers.triton import (
    find_layout,
    library_report,
    remove_shared_memory,
    triton_command,
    triton_spec,
    write_model_repository,
)
from benchmarks.peers.venvs import ensure_venv, package_versions
from benchmarks.server_process import HOST, running_server
from normserve.model_repository import ModelConfig, read_entry, scan_model

__all__ = ["FULL", "NAME", "NORMSERVE", "QUICK", "Options", "measure", "normserve_contender", "run"]

NAME = "peers"
FULL = LoadPlan()
QUICK = LoadPlan(
    rounds=2, duration_s=1.0, warmup_requests=200, min_requests=100, sequential_requests=100
)
LEAN = {"provider": "cpu", "log_level": "warning", "access_log": False}
# name: (label, settings, processes). Several processes are replicas on their own ports, the
# load's connections spread over them in turn (what a Service in front of replicas does).
NORMSERVE = {
    "normserve": ("default settings, access log off", LEAN, 1),
    "normserve 2 replicas": (
        "two processes, default settings, access log off; connections spread over them",
        LEAN,
        2,
    ),
}
PEER_THREADS = 1
TRITON_DELAY_MS = 2.0
THROUGHPUT_RATIO = 1.2


@dataclass(frozen=True)
class Options:
    """What to compare: the repository and model served, the peers beside normserve, the load."""

    repository: Path
    model: str = "digits"
    peers: tuple[str, ...] = ("triton", "kserve")
    plan: LoadPlan = FULL

    @classmethod
    def from_env(cls, quick: bool) -> Options:
        """``$NORMSERVE_BENCH_REPOSITORY`` (``make bench`` sets it; else ``model_repository``)
        and ``$NORMSERVE_BENCH_PEERS`` (comma-separated; empty for normserve alone)."""
        peers = os.environ.get("NORMSERVE_BENCH_PEERS", "triton,kserve")
        return cls(
            repository=Path(os.environ.get("NORMSERVE_BENCH_REPOSITORY", "model_repository")),
            peers=tuple(p.strip() for p in peers.split(",") if p.strip()),
            plan=QUICK if quick else FULL,
        )


def _model(ctx: Context, options: Options) -> tuple[Path, ModelConfig, Path, str]:
    """A repository holding only the benchmarked entry, its config, its ONNX file, its source."""
    model_dir = options.repository / options.model
    if model_dir.is_dir() and scan_model(model_dir):
        entry = scan_model(model_dir)[-1]
        source = f"{entry.path} (make model: the trained default)"
        repository = ctx.work_dir / f"{NAME}-repository"
        shutil.rmtree(repository, ignore_errors=True)
        shutil.copytree(entry.path, repository / entry.name / str(entry.version))
        entry = scan_model(repository / entry.name)[-1]
    else:
        ctx.log(f"   {model_dir} holds no model: using a synthetic digits_cnn export")
        repository = ctx.workspace.repository_of(NAME, ["digits_cnn"])
        entry = scan_model(repository / ctx.workspace.model("digits_cnn").name)[-1]
        source = "synthetic digits_cnn export"
    return repository, read_entry(entry), entry.onnx_path, source


def normserve_contender(
    stack: contextlib.ExitStack,
    name: str,
    repository: Path,
    settings: dict[str, Any],
    log: Path,
    executable: str | None = None,
) -> Contender:
    """normserve started as every benchmark starts it (``benchmarks.server_process``);
    ``executable`` runs another build's ``normserve`` script."""
    server = stack.enter_context(
        running_server(repository, log, env=env_for(settings), executable=executable)
    )
    return Contender(name, server.port, server.process.pid, server.ready_s, log)


def _triton(
    ctx: Context, stack: contextlib.ExitStack, config: ModelConfig, onnx_path: Path
) -> tuple[Contender, dict[str, Any]]:
    venv = ensure_venv(triton_spec(), log=ctx.log)
    layout = find_layout(venv)
    libraries = library_report(layout)
    missing = {k: v["missing"] for k, v in libraries.items() if v["missing"]}
    if missing:
        raise RuntimeError(f"shared libraries not found (ldd): {missing}")
    repository = write_model_repository(
        ctx.work_dir / "triton-repository",
        config,
        onnx_path,
        max_queue_delay_ms=TRITON_DELAY_MS,
        intra_op_threads=PEER_THREADS,
    )
    prefix = f"normserve-bench-{os.getpid()}-"
    command = triton_command(layout, repository, prefix)
    stack.callback(remove_shared_memory, prefix)  # after the server has stopped
    log = ctx.work_dir / "logs" / f"{NAME}-triton.log"
    contender = stack.enter_context(running_peer("triton", command, log))
    return contender, {
        "label": "Triton (C++ HTTP front, Python backend running onnxruntime, intra-op "
        f"{PEER_THREADS}, dynamic batching {TRITON_DELAY_MS:g} ms)",
        "packages": package_versions(venv, ("nvidia-pytriton", "onnxruntime", "numpy")),
        "shared_libraries": libraries,
        "ports": dict(command.ports),
        "config_pbtxt": (repository / config.name / "config.pbtxt").read_text(),
    }


def _kserve(
    ctx: Context, stack: contextlib.ExitStack, config: ModelConfig, onnx_path: Path
) -> tuple[Contender, dict[str, Any]]:
    venv = ensure_venv(kserve_spec(), log=ctx.log)
    command = kserve_command(venv, onnx_path, config.name, intra_op_threads=PEER_THREADS)
    log = ctx.work_dir / "logs" / f"{NAME}-kserve.log"
    contender = stack.enter_context(running_peer("kserve", command, log))
    return contender, {
        "label": f"KServe Python server (custom model, onnxruntime, intra-op {PEER_THREADS}, "
        "no batching)",
        "packages": package_versions(venv, ("kserve", "onnxruntime", "numpy", "uvicorn")),
        "ports": dict(command.ports),
    }


STARTERS: dict[str, Callable[..., tuple[Contender, dict[str, Any]]]] = {
    "triton": _triton,
    "kserve": _kserve,
}


def _targets(servers: dict[str, Any]) -> list[dict[str, Any]]:
    ours, triton = servers.get("normserve"), servers.get("triton")
    if not ours or not triton or "summary" not in triton:
        note = "Triton was not measured"
        return [
            Target(
                "peers: normserve throughput vs Triton",
                f"≥ {THROUGHPUT_RATIO}x",
                None,
                "x",
                None,
                note,
            ).to_dict(),
            Target("peers: normserve p99 vs Triton", "≤ 1x", None, "x", None, note).to_dict(),
        ]
    a, b = ours["summary"], triton["summary"]
    ratio = a["throughput_rps"]["median"] / b["throughput_rps"]["median"]
    p99 = a["p99_ms"]["median"] / b["p99_ms"]["median"]
    where = "64 connections, V2 JSON of 1-4 rows, medians of rounds"
    return [
        Target(
            "peers: normserve throughput vs Triton",
            f"≥ {THROUGHPUT_RATIO}x",
            round(ratio, 3),
            "x Triton",
            ratio >= THROUGHPUT_RATIO,
            where,
        ).to_dict(),
        Target(
            "peers: normserve p99 vs Triton", "≤ 1x", round(p99, 3), "x Triton", p99 <= 1.0, where
        ).to_dict(),
    ]


def _source_state() -> dict[str, Any]:
    """The commit measured, and whether the serving code differed from it (a shared tree)."""
    root = Path(__file__).resolve().parent.parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "service", "normserve").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "serving_code_changed": changed}


def measure(ctx: Context) -> dict[str, Any]:
    return run(ctx, Options.from_env(ctx.quick))


def run(ctx: Context, options: Options) -> dict[str, Any]:
    """Start normserve (each configuration) and each peer, compare them, stop them all."""
    plan = options.plan
    repository, config, onnx_path, source = _model(ctx, options)
    workload = make_workload(config, onnx_path, max_rows=plan.max_rows)
    servers: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        contenders = []
        for name, (label, settings, processes) in NORMSERVE.items():
            started = [
                normserve_contender(
                    stack,
                    name,
                    repository,
                    settings,
                    ctx.work_dir / "logs" / f"{NAME}-{name.replace(' ', '-')}-{i}.log",
                )
                for i in range(processes)
            ]
            contenders.append(replace(started[0], replicas=tuple(started[1:])))
            effective = {**settings_defaults(), **settings}
            servers[name] = {"label": label, "settings": effective, "processes": processes}
        for peer in options.peers:
            try:
                contender, info = STARTERS[peer](ctx, stack, config, onnx_path)
            except Exception as exc:  # one peer that cannot run must not stop the others
                ctx.log(f"   {peer}: not measured: {exc}")
                servers[peer] = {"skipped": f"{type(exc).__name__}: {exc}"}
                continue
            contenders.append(contender)
            servers[peer] = info
        for contender in contenders:
            metadata = server_metadata(HOST, contender.port)
            servers[contender.name].update(
                server={k: metadata.get(k) for k in ("name", "version")},
                ready_s=contender.ready_s,
            )
        compared = compare(contenders, workload, plan, log=ctx.log)
    for name, figures in compared["servers"].items():
        servers[name].update(figures)
    return {
        "config": {
            "model": config.name,
            "model_source": source,
            "normserve_source": _source_state(),
            "max_batch_size": config.max_batch_size,
            "plan": plan.to_dict(),
            "body": "V2 JSON",
            "peers_requested": list(options.peers),
            "method": "closed loop of `concurrency` keep-alive connections (benchmarks.soak: "
            "every answer checked against ONNX Runtime's output for its own rows), a warm-up "
            "then about duration_s recorded; then sequential batch-1 requests on one connection "
            "(same client, asyncio). Server CPU = utime+stime of the server's process tree over "
            "the recorded loop. Servers interleaved, order rotated each round; medians over "
            "rounds (min-max).",
        },
        "orders": compared["orders"],
        "servers": servers,
        "targets": _targets(servers),
    }
