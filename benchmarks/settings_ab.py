"""normserve under several settings, side by side on the peers' load: how a default is chosen.

``python -m benchmarks.settings_ab --variant NAME=SETTING=VALUE[,SETTING=VALUE...] ...
[--build NAME=OTHER/.venv/bin/normserve ...] [--tag T]``

Each variant is one ``normserve serve`` of this build with its settings (``Settings`` field
names, e.g. ``intra_op_threads=1``; ``NAME=`` alone is the defaults), all started at once on
the same model and repository as the peers benchmark (``NORMSERVE_BENCH_REPOSITORY``, else a
synthetic digits export), access log off. ``benchmarks.peers.load.compare`` measures them in
rotated rounds: a 64-connection closed loop of verified V2 JSON requests of 1 to 4 rows, then
sequential batch-1 requests; server CPU per request from ``/proc``. Writes
``benchmarks/results/settings_ab-<tag>.json`` and prints the medians. Not part of ``make bench``:
it is the measurement behind a choice of defaults (docs/benchmarks.md quotes it). ``--build``
adds another build of normserve (its own ``normserve`` script, e.g. a worktree of an older
commit) with its own defaults: a change measured before and after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.context import RESULTS_DIR, Context
from benchmarks.features import settings_defaults
from benchmarks.machine import describe_machine
from benchmarks.peers.benchmark import LEAN, Options, _model, normserve_contender
from benchmarks.peers.load import LoadPlan, compare, make_workload

__all__ = ["main", "parse_build", "parse_variant"]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=key=value,key=value`` → (NAME, settings); values stay strings (env variables)."""
    name, _, rest = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=SETTING=VALUE,...")
    settings: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{pair!r} in {text!r}: expected SETTING=VALUE")
        settings[key.strip()] = value.strip()
    return name, settings


def parse_build(text: str) -> tuple[str, str]:
    """``NAME=PATH`` → (NAME, PATH of another build's ``normserve`` script)."""
    name, sep, path = text.partition("=")
    if not name or not sep or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH/TO/normserve (a file)")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True)
    parser.add_argument("--build", type=parse_build, action="append", default=[])
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per round")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    plan = replace(LoadPlan(), rounds=args.rounds, duration_s=args.duration)
    with tempfile.TemporaryDirectory(prefix="normserve-ab-") as work:
        ctx = Context(work_dir=Path(work), quick=False)
        options = Options.from_env(quick=False)
        repository, config, onnx_path, source = _model(ctx, options)
        workload = make_workload(config, onnx_path, max_rows=plan.max_rows)
        with contextlib.ExitStack() as stack:
            contenders = [
                normserve_contender(
                    stack, name, repository, {**LEAN, **settings}, Path(work) / f"{name}.log"
                )
                for name, settings in args.variant
            ] + [
                normserve_contender(
                    stack, name, repository, LEAN, Path(work) / f"{name}.log", executable
                )
                for name, executable in args.build
            ]
            compared = compare(contenders, workload, plan, log=print)
    result = {
        "machine": describe_machine(),
        "model": {"name": config.name, "source": source},
        "plan": plan.to_dict(),
        "variants": {
            **{
                name: {"settings": {**settings_defaults(), **LEAN, **settings}}
                for name, settings in args.variant
            },
            **{
                name: {"build": executable, "settings": {**LEAN, "others": "that build's defaults"}}
                for name, executable in args.build
            },
        },
        **compared,
    }
    for name, figures in compared["servers"].items():
        s = figures["summary"]
        print(
            f"{name}: {s['throughput_rps']['median']:.0f} req/s, p50 {s['p50_ms']['median']:.2f} "
            f"p99 {s['p99_ms']['median']:.2f} ms, sequential p50 "
            f"{s['sequential_p50_ms']['median']:.3f} ms, server CPU "
            f"{s['server_cpu_ms_per_request']['median']:.3f} ms/req, wrong {s['wrong']}"
        )
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"settings_ab-{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
