"""The peers benchmark's chart (``peers.png``) and Markdown table (in SUMMARY.md / README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["chart", "markdown"]

COLORS = {
    "normserve": "#1f77b4",
    "normserve 2 replicas": "#9467bd",
    "triton": "#76b900",
    "kserve": "#ff7f0e",
}
NAMES = {"triton": "Triton", "kserve": "KServe"}


def _measured(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in result.get("servers", {}).items() if "summary" in s}


def _cell(x: dict[str, Any], digits: int) -> str:
    if x["n"] == 1 or x["min"] == x["max"]:
        return f"{x['median']:,.{digits}f}"
    return f"{x['median']:,.{digits}f} ({x['min']:,.{digits}f}-{x['max']:,.{digits}f})"


def _title(name: str, server: dict[str, Any]) -> str:
    """``Triton 2.51.0``: a peer's name with the version its server reports."""
    version = (server.get("server") or {}).get("version")
    return f"{NAMES[name]} {version}" if name in NAMES and version else name


def markdown(result: dict[str, Any]) -> list[str]:
    """The side-by-side table: medians over rounds (min-max)."""
    config, plan = result["config"], result["config"]["plan"]
    source = config.get("normserve_source") or {}
    at = f"normserve at {source['commit']}" if source.get("commit") else "normserve"
    if source.get("serving_code_changed"):
        at += " with uncommitted serving changes"
    lines = [
        f"{at}; model `{config['model']}` ({config['model_source']}); {plan['concurrency']} "
        f"connections in a closed loop, V2 JSON requests of 1-{plan['max_rows']} rows, every "
        f"answer checked against its own input; {plan['rounds']} rotated rounds, medians "
        "(min-max). Server CPU: the server's whole process tree, per request.",
        "",
        "| server | configuration | throughput, req/s | p50, ms | p99, ms | sequential batch-1 "
        "p50, ms | server CPU per request, ms | answers verified (wrong) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, server in _measured(result).items():
        s = server["summary"]
        lines.append(
            f"| {_title(name, server)} | {server['label']} | {_cell(s['throughput_rps'], 0)} | "
            f"{_cell(s['p50_ms'], 1)} | {_cell(s['p99_ms'], 1)} | "
            f"{_cell(s['sequential_p50_ms'], 2)} | {_cell(s['server_cpu_ms_per_request'], 3)} | "
            f"{s['verified']:,} ({s['wrong']}) |"
        )
    for name, server in result.get("servers", {}).items():
        if "skipped" in server:
            reason = " ".join(server["skipped"].split())[:300].replace("|", "/")
            lines.append(f"| {NAMES.get(name, name)} | not measured: {reason} | | | | | | |")
    return lines


def chart(result: dict[str, Any], path: Path) -> bool:
    from benchmarks.charts import figure, save

    servers = _measured(result)
    if not servers:
        return False
    names = list(servers)
    colors = [COLORS.get(n, "#7f7f7f") for n in names]
    panels = (
        ("throughput_rps", "requests/s (64 connections)", None),
        (("p50_ms", "p99_ms"), "latency at 64 connections, ms", None),
        ("sequential_p50_ms", "sequential batch-1 p50, ms", None),
        ("server_cpu_ms_per_request", "server CPU per request, ms", None),
    )
    fig, axes = figure(2, 2, width=6.4, height=3.6)
    for ax, (key, ylabel, _) in zip([a for row in axes for a in row], panels, strict=True):
        keys = key if isinstance(key, tuple) else (key,)
        width = 0.8 / len(keys)
        for k, stat in enumerate(keys):
            values = [servers[n]["summary"][stat] for n in names]
            xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(names))]
            ax.bar(
                xs,
                [v["median"] for v in values],
                width=width,
                color=colors,
                alpha=1.0 if k == 0 else 0.55,
                hatch=None if k == 0 else "//",
                yerr=[
                    [v["median"] - v["min"] for v in values],
                    [v["max"] - v["median"] for v in values],
                ],
                capsize=3,
                label=stat.removesuffix("_ms") if len(keys) > 1 else None,
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_title(n, servers[n]) for n in names], fontsize=8, rotation=12)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    plan = result["config"]["plan"]
    save(
        fig,
        path,
        f"normserve beside Triton and KServe: model {result['config']['model']}, V2 JSON of "
        f"1-{plan['max_rows']} rows, {plan['rounds']} rotated rounds, medians (min-max)",
        result,
    )
    return True
