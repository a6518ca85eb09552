"""Shared matplotlib set-up for the benchmark charts (imported only when a chart is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["COLORS", "figure", "save", "subtitle"]

COLORS = {
    "eager": "#7f7f7f",
    "folded/ORT_DISABLE_ALL": "#9ecae1",
    "folded/ORT_ENABLE_ALL": "#08519c",
    "unfolded/ORT_DISABLE_ALL": "#fdae6b",
    "unfolded/ORT_ENABLE_ALL": "#d94801",
    "bare": "#2ca02c",
    "json": "#d62728",
    "binary": "#1f77b4",
    "on": "#1f77b4",
    "off": "#ff7f0e",
    "on, intra_op_threads=1": "#9467bd",
}


def figure(rows: int, cols: int, *, width: float = 6.0, height: float = 4.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    return fig, axes


def subtitle(result: dict[str, Any]) -> str:
    from benchmarks.machine import describe_short

    quick = "  [QUICK run: not for publication]" if result.get("quick") else ""
    load = result.get("load_average_before")
    return f"{describe_short(result['machine'])}\nload average before {load}{quick}"


def save(fig: Any, path: Path, title: str, result: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(f"{title}\n{subtitle(result)}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
