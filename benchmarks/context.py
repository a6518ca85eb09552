"""What every benchmark gets: run options, the shared workspace, and how results are written."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from benchmarks.machine import describe_machine, load_average

__all__ = ["RESULTS_DIR", "Benchmark", "Context", "Target", "run_benchmark"]

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Target:
    """A figure against the issue's target; ``met`` is None when it could not be measured."""

    name: str
    goal: str
    value: float | None
    unit: str
    met: bool | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "value": self.value,
            "unit": self.unit,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Context:
    """``quick`` shortens every run (to check the scripts, not to publish figures)."""

    quick: bool
    work_dir: Path
    results_dir: Path = RESULTS_DIR
    machine: dict[str, Any] = field(default_factory=describe_machine)
    _workspace: Any = None

    @property
    def workspace(self) -> Any:
        """The shared :class:`benchmarks.bench_models.Workspace` (imports torch on first use)."""
        if self._workspace is None:
            from benchmarks.bench_models import Workspace

            self._workspace = Workspace(self.work_dir, log=self.log)
        return self._workspace

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


class Benchmark(Protocol):
    NAME: str

    def measure(self, ctx: Context) -> dict[str, Any]: ...

    def chart(self, result: dict[str, Any], path: Path) -> bool: ...


def _json_default(value: object) -> object:
    if hasattr(value, "to_dict"):
        return value.to_dict()  # type: ignore[no-any-return]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    raise TypeError(f"cannot serialize {type(value).__name__}")


def run_benchmark(ctx: Context, bench: Benchmark, log: Callable[[str], None] | None = None) -> dict:
    """Measure, then write ``<NAME>.json`` and (when it draws one) ``<NAME>.png``."""
    say = log or ctx.log
    say(f"== {bench.NAME}")
    started = time.perf_counter()
    load_before = load_average()
    result = bench.measure(ctx)
    envelope = {
        "benchmark": bench.NAME,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": ctx.quick,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": ctx.machine,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        **result,
    }
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = ctx.results_dir / f"{bench.NAME}.json"
    text = json.dumps(envelope, indent=2, default=_json_default, allow_nan=False)
    json_path.write_text(text + "\n")
    png_path = ctx.results_dir / f"{bench.NAME}.png"
    if bench.chart(json.loads(text), png_path):
        say(f"   wrote {json_path} and {png_path} ({envelope['wall_s']} s)")
    else:
        png_path.unlink(missing_ok=True)
        say(f"   wrote {json_path}, no chart ({envelope['wall_s']} s)")
    return envelope
