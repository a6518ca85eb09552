"""Benchmark 2, serving overhead: end-to-end latency of one sequential request at batch 1 minus
the bare ``session.run`` of the same input, for JSON and binary bodies, on the digits model and
the CIFAR ResNet.

Interleaved per round: the bare session (in this process), the same call hopped to a worker
thread and awaited from an event loop (what the batcher does), each body kind against a server
with quiet logs, the primary body against a server with the shipped default logging (access log
on), ``GET /v2/health/live`` (the HTTP stack with no inference), uvicorn running a raw ASGI
app that only answers (the server's own floor), and the same request bytes
against a trivial echo server (the floor of this client plus loopback TCP, which is in every
end-to-end figure but is not the server's). Then the server's own statistics split a request
into decode, queue, compute and encode.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.asgi_floor import uvicorn_floor_process
from benchmarks.bare import load_served_model
from benchmarks.bench_models import find_cifar_resnet
from benchmarks.charts import COLORS, figure, save
from benchmarks.context import Context, Target
from benchmarks.echo_server import echo_process
from benchmarks.features import (
    env_for,
    server_metadata,
    server_stats,
    stats_delta,
    supports_binary,
)
from benchmarks.http_client import HttpConnection, encode_request
from benchmarks.probes import CallProbe, HttpProbe
from benchmarks.server_process import HOST, running_server
from benchmarks.stats import interleave, spread, summarize_latencies
from benchmarks.v2_payload import decode_response, infer_request

NAME = "overhead"
DIGITS = "digits_cnn"
TARGET_MS = 0.25
LEAN = {"provider": "cpu", "log_level": "warning"}
DEFAULT_LOGGING = {"provider": "cpu"}


def _check_same(served: dict[str, np.ndarray], bare: list[np.ndarray], names: list[str]) -> None:
    """A benchmark of wrong answers would be worthless: served must equal bare."""
    for name, expected in zip(names, bare, strict=True):
        got = served[name]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"served output {name!r} differs from the bare session's")


def _diff(a: list[float], b: list[float] | None) -> dict[str, Any]:
    """Per-round ``a - b`` (or ``a``) in milliseconds."""
    values = a if b is None else [x - y for x, y in zip(a, b, strict=True)]
    return spread(values).scaled(1e3).to_dict()


def _measure_model(
    ctx: Context,
    arch: str,
    repository: Path,
    conns: dict[str, HttpConnection],
    binary: bool,
) -> dict[str, Any]:
    bench = ctx.workspace.model(arch)
    loaded = load_served_model(repository / bench.name / "1", {"provider": "cpu"})
    session = loaded.session
    feed = {bench.checkpoint.input.name: bench.inputs[:1].numpy()}
    outputs = [o.name for o in session.get_outputs()]
    expected = session.run(outputs, feed)
    host = f"{HOST}:{conns['lean'].port}"
    bodies = {"json": infer_request(host, bench.name, feed, binary=False)}
    if binary:
        bodies["binary"] = infer_request(host, bench.name, feed, binary=True)
    for body in bodies.values():
        _check_same(decode_response(conns["lean"].request(body)), expected, outputs)
        _check_same(decode_response(conns["default"].request(body)), expected, outputs)
    primary = "binary" if binary else "json"
    live = encode_request("GET", "/v2/health/live", host=host)
    loop = asyncio.new_event_loop()
    pool = ThreadPoolExecutor(max_workers=1)

    def hop() -> object:
        """session.run on a worker thread, awaited from an event loop: the batcher's hop."""
        return loop.run_until_complete(loop.run_in_executor(pool, session.run, outputs, feed))

    probes = {
        "bare": CallProbe(lambda: session.run(outputs, feed)),
        "bare + executor hop": CallProbe(hop),
        **{kind: HttpProbe(conns["lean"], body) for kind, body in bodies.items()},
        f"{primary}, default logging": HttpProbe(conns["default"], bodies[primary]),
        "GET /v2/health/live": HttpProbe(conns["lean"], live),
        "uvicorn + raw ASGI app": HttpProbe(conns["asgi"], bodies[primary]),
        "loopback floor": HttpProbe(conns["echo"], bodies[primary]),
    }
    for probe in probes.values():
        probe.block(ctx.pick(50, 10))  # warm every path before anything is recorded
        probe.times.clear()
    calls, rounds = ctx.pick(200, 40), ctx.pick(12, 3)
    try:
        samples = interleave({k: (lambda p=p: p.block(calls)) for k, p in probes.items()}, rounds)
    finally:
        pool.shutdown()
        loop.close()
    before = server_stats(HOST, conns["lean"].port, bench.name)
    HttpProbe(conns["lean"], bodies[primary]).block(calls * 2)
    server_side = stats_delta(before, server_stats(HOST, conns["lean"].port, bench.name))
    bare = samples["bare"]
    e2e_kinds = [k for k in bodies] + [f"{primary}, default logging"]
    result = {
        "arch": arch,
        "model": bench.name,
        "request_bytes": {kind: len(body) for kind, body in bodies.items()},
        "ms": {k: spread(v).scaled(1e3).to_dict() for k, v in samples.items()},
        "overhead_ms": {
            k: spread([e - b for e, b in zip(samples[k], bare, strict=True)]).scaled(1e3).to_dict()
            for k in e2e_kinds
        },
        "latency_ms": {
            k: summarize_latencies(p.times).to_dict() for k, p in probes.items() if p.times
        },
        "breakdown_ms": {
            "client + loopback TCP (echo server)": _diff(samples["loopback floor"], None),
            "uvicorn itself (raw ASGI - echo)": _diff(
                samples["uvicorn + raw ASGI app"], samples["loopback floor"]
            ),
            "app stack, no inference (live - raw ASGI)": _diff(
                samples["GET /v2/health/live"], samples["uvicorn + raw ASGI app"]
            ),
            "worker-thread hop (hop - bare)": _diff(samples["bare + executor hop"], bare),
        },
        "server_side": {"kind": primary, **server_side},
        "calls_per_block": calls,
        "rounds": rounds,
    }
    ctx.log(
        f"   {arch}: bare {result['ms']['bare']['median']:.3f} ms; "
        + "; ".join(
            f"{k} +{result['overhead_ms'][k]['median']:.3f} ms" for k in result["overhead_ms"]
        )
        + f"; loopback floor {result['ms']['loopback floor']['median']:.3f} ms"
    )
    return result


def measure(ctx: Context) -> dict[str, Any]:
    resnet = find_cifar_resnet()
    archs = [DIGITS] + ([resnet] if resnet else [])
    repository = ctx.workspace.repository_of(NAME, archs)
    logs = ctx.work_dir / "logs"
    with contextlib.ExitStack() as stack:
        lean = stack.enter_context(
            running_server(repository, logs / "overhead-lean.log", env=env_for(LEAN))
        )
        default = stack.enter_context(
            running_server(repository, logs / "overhead-default.log", env=env_for(DEFAULT_LOGGING))
        )
        echo_port = stack.enter_context(echo_process())
        asgi_port = stack.enter_context(uvicorn_floor_process())
        conns = {
            "asgi": stack.enter_context(HttpConnection(HOST, asgi_port)),
            "lean": stack.enter_context(HttpConnection(HOST, lean.port)),
            "default": stack.enter_context(HttpConnection(HOST, default.port)),
            "echo": stack.enter_context(HttpConnection(HOST, echo_port)),
        }
        metadata = server_metadata(HOST, lean.port)
        binary = supports_binary(metadata)
        if not binary:
            ctx.log("   the server does not offer binary_tensor_data: JSON bodies only")
        models = [_measure_model(ctx, arch, repository, conns, binary) for arch in archs]
    digits = models[0]
    kind = "binary" if binary else "json"
    value = digits["overhead_ms"][kind]["median"]
    target = Target(
        name="server overhead, digits, batch 1, binary body",
        goal=f"≤ {TARGET_MS} ms over session.run",
        value=round(value, 4),
        unit="ms",
        met=value <= TARGET_MS if binary else None,
        note="" if binary else "binary extension not offered yet; value is the JSON overhead",
    )
    return {
        "config": {
            "servers": {"quiet logs": LEAN, "default logging": DEFAULT_LOGGING},
            "server_extensions": metadata.get("extensions"),
            "binary_bodies": binary,
            "cifar_resnet": resnet,
            "method": "sequential requests on one keep-alive connection (raw-socket client); "
            "per round one block per alternative, rotating order; a block's figure is its "
            "median; overhead per round = e2e block median - bare block median",
        },
        "models": models,
        "targets": [target.to_dict()],
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    models = result["models"]
    fig, axes = figure(len(models), 1, width=9.0, height=3.6)
    for ax, model in zip((row[0] for row in axes), models, strict=True):
        keys = list(model["ms"])[::-1]
        medians = [model["ms"][k]["median"] for k in keys]
        lo = [model["ms"][k]["median"] - model["ms"][k]["min"] for k in keys]
        hi = [model["ms"][k]["max"] - model["ms"][k]["median"] for k in keys]
        colors = [COLORS.get(k.split(",")[0], "#9467bd") for k in keys]
        ax.barh(range(len(keys)), medians, xerr=[lo, hi], color=colors, capsize=3)
        for i, k in enumerate(keys):
            over = model["overhead_ms"].get(k)
            label = f" {medians[i]:.3f}" + (f"  (bare +{over['median']:.3f})" if over else "")
            ax.annotate(label, (medians[i] + hi[i], i), va="center", fontsize=8)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels(keys, fontsize=8)
        ax.set_xlabel("ms per request at batch 1 (median of block medians, min-max)")
        ax.set_title(f"{model['arch']}: served vs bare session.run", fontsize=10)
        ax.axvline(model["ms"]["bare"]["median"] + TARGET_MS, ls="--", color="k", lw=0.8)
        ax.margins(x=0.3)
    save(fig, path, "Serving overhead at batch 1 (dashed line: bare + 0.25 ms target)", result)
    return True
