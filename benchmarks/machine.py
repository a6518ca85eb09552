"""What the numbers were measured on: CPU, cores, memory, software versions, load."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "describe_short", "load_average"]

_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "torch", "numpy", "fastapi", "uvicorn", "orjson")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the machine was around a measurement."""
    return [round(x, 2) for x in os.getloadavg()]


def describe_machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": {p: v for p in _PACKAGES if (v := _version(p)) is not None},
    }


def describe_short(machine: dict[str, Any]) -> str:
    """One line for tables and chart titles."""
    ort = machine["packages"].get("onnxruntime") or machine["packages"].get("onnxruntime-gpu")
    return (
        f"{machine['cpu']}, {machine['usable_cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, onnxruntime {ort}"
    )
