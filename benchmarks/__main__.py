"""``python -m benchmarks [--quick] [--only NAME,...]``: run the benchmarks, write
``benchmarks/results/*.json|png``, then the summary table (and docs/benchmarks.md's copy of it).

``make bench`` runs this; ``make bench QUICK=1`` runs it with ``--quick``: short runs that check
the scripts, written to a temporary directory and marked QUICK (never the published figures).
"""

from __future__ import annotations

import os

# Before torch is imported anywhere: OpenMP threads that busy-wait at barriers collapse on a
# small shared machine (eager PyTorch measured 20-100x slower while ONNX Runtime's threads or
# another process held the cores). Passive waiting is what a server on a shared host would use.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.context import RESULTS_DIR, Context, run_benchmark

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "normserve-bench-quick"

# In the order they run: the cheap, quiet ones first; the GPU one last (it skips without CUDA).
# peers installs Triton and KServe into their own environments under .venv-peers/ the first time.
BENCHMARKS = (
    "loadgen_ceiling",
    "compute",
    "decode",
    "overhead",
    "throughput",
    "grpc_bench",
    "cold_start",
    "soak",
    "peers",
    "gpu",
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs to check the scripts")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"output directory (default: {RESULTS_DIR}; with --quick: {QUICK_RESULTS_DIR}, so a "
        "check never overwrites the published figures)",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="workspace to keep (default: a temporary one)"
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="do not refresh the tables in docs/benchmarks.md"
    )
    parser.add_argument(
        "--charts-only",
        action="store_true",
        help="measure nothing: redraw the charts and the summary from the existing JSON",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.results is None:
        args.results = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(
            f"error: unknown benchmark(s) {unknown}; expected {list(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    if args.charts_only:
        from benchmarks.report import redraw, write_report

        redraw(args.results, names, log=print)
        write_report(args.results, update_readme=not args.no_readme, log=print)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="normserve-bench-"))
    ctx = Context(quick=args.quick, work_dir=work, results_dir=args.results)
    started = time.perf_counter()
    failed: list[str] = []
    try:
        for name in names:
            module = importlib.import_module(f"benchmarks.{name}")
            try:
                run_benchmark(ctx, module)  # type: ignore[arg-type]
            except Exception:
                traceback.print_exc()
                failed.append(name)
        from benchmarks.report import write_report

        write_report(args.results, update_readme=not args.no_readme, log=ctx.log)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.perf_counter() - started) / 60
    if failed:
        print(f"error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    ctx.log(f"done in {minutes:.1f} min; results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
