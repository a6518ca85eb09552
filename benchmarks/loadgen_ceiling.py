"""The load generator's own ceiling: the same client against a trivial echo server in its own
process. What it reaches here bounds what any server figure could show; the server figures
elsewhere are far below it, so they measure the server, not the client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.charts import figure, save
from benchmarks.context import Context
from benchmarks.echo_server import echo_process
from benchmarks.http_client import HttpConnection, encode_request
from benchmarks.loadgen import run_load
from benchmarks.probes import HttpProbe
from benchmarks.server_process import HOST
from benchmarks.stats import interleave, spread

NAME = "loadgen_ceiling"


def measure(ctx: Context) -> dict[str, Any]:
    request = encode_request("POST", "/v2/models/m/infer", host=HOST, body=b"x" * 400)
    levels = ctx.pick((1, 8, 32, 64), (1, 32))
    duration_s = ctx.pick(1.5, 0.5)
    runs: dict[int, Any] = {}
    with echo_process() as port:
        with HttpConnection(HOST, port) as conn:
            probe = HttpProbe(conn, request)
            probe.block(200)
            sequential = interleave({"rtt": lambda: probe.block(500)}, ctx.pick(5, 2))["rtt"]
        for level in levels:
            runs[level] = run_load(
                HOST, port, request, concurrency=level, duration_s=duration_s, warmup_s=0.2
            ).to_dict()
    ctx.log(
        f"   sequential round trip {spread(sequential).median * 1e3:.3f} ms; "
        + ", ".join(f"c={c}: {r['throughput_rps']:.0f}/s" for c, r in runs.items())
    )
    return {
        "config": {
            "server": "benchmarks.echo_server in its own process: fixed 11-byte JSON answer",
            "request_bytes": len(request),
        },
        "sequential_round_trip_ms": spread(sequential).scaled(1e3).to_dict(),
        "closed_loop": [runs[c] for c in levels],
    }


def chart(result: dict[str, Any], path: Path) -> bool:
    fig, axes = figure(1, 1, width=6.0)
    ax = axes[0][0]
    rows = result["closed_loop"]
    levels = [r["concurrency"] for r in rows]
    ax.plot(levels, [r["throughput_rps"] for r in rows], "o-")
    for r in rows:
        ax.annotate(
            f"{r['throughput_rps']:.0f}/s\n{r['client_cpu_us_per_request']:.0f} µs CPU/req",
            (r["concurrency"], r["throughput_rps"]),
            fontsize=8,
            ha="center",
            va="bottom",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.set_xlabel("connections")
    ax.set_ylabel("requests / s")
    ax.margins(y=0.3)
    rtt = result["sequential_round_trip_ms"]["median"]
    ax.set_title(f"load generator vs a trivial server (sequential round trip {rtt:.3f} ms)")
    save(fig, path, "Load generator ceiling", result)
    return True
