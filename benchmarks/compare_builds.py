"""Two builds of normserve side by side: is a change slower per request?

``python -m benchmarks.compare_builds --baseline OLD/.venv/bin/normserve --repository R``

Both servers run at once (quiet logs, one intra-op thread each), each on its own port, on the
same repository. Each round sends a block of sequential batch-1 requests to one server and then
the same block to the other (the order alternating round by round), for a JSON and a binary
body, so machine noise falls on both alike. Every answer is checked (200, the same outputs from
both builds). The figure per build is the median over rounds of each round's median latency;
the ratio candidate/baseline is what a change is judged by. Writes a JSON result.

The candidate is this interpreter's ``normserve`` unless ``--candidate`` names another.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_client import HttpConnection
from benchmarks.machine import describe_machine, load_average
from benchmarks.server_process import HOST, normserve_command, running_server
from benchmarks.v2_payload import decode_response, infer_request
from normserve.model_repository import numpy_dtype

ENV = {"NORMSERVE_ACCESS_LOG": "false", "NORMSERVE_INTRA_OP_THREADS": "1"}


def _sample(repository: Path, model: str) -> dict[str, np.ndarray]:
    """One batch-1 input for every input of the model's newest version, from its model.json."""
    versions = sorted(
        (p for p in (repository / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    meta = json.loads((versions[-1] / "model.json").read_text())
    rng = np.random.default_rng(0)
    return {
        spec["name"]: rng.standard_normal([1, *spec["shape"][1:]]).astype(
            numpy_dtype(spec["datatype"])
        )
        for spec in meta["inputs"]
    }


def _block(conn: HttpConnection, request: bytes, calls: int) -> tuple[float, Any]:
    times, outputs = [], None
    for _ in range(calls):
        elapsed, response = conn.timed(request)
        if response.status != 200:
            raise RuntimeError(f"answered {response.status}: {response.body[:200]!r}")
        times.append(elapsed)
        outputs = decode_response(response)
    return statistics.median(times), outputs


def compare(
    baseline: str,
    candidate: str,
    repository: Path,
    model: str,
    rounds: int,
    calls: int,
    candidate_repository: Path | None = None,
) -> dict[str, Any]:
    """Latency of both builds, round by round; ``AssertionError`` if their answers differ.
    ``candidate_repository`` serves the candidate another export of the model (default: the
    same repository)."""
    load_before = load_average()
    inputs = _sample(repository, model)
    builds = {"baseline": baseline, "candidate": candidate}  # name → normserve script
    per_body: dict[str, dict[str, list[float]]] = {}
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        repositories = {"baseline": repository, "candidate": candidate_repository or repository}
        servers = {
            name: stack.enter_context(
                running_server(
                    repositories[name], logs / f"{name}.log", env=ENV, executable=executable
                )
            )
            for name, executable in builds.items()
        }
        conns = {name: HttpConnection(HOST, s.port) for name, s in servers.items()}
        for conn in conns.values():
            stack.callback(conn.close)
        for binary in (False, True):
            body = "binary" if binary else "json"
            request = infer_request(HOST, model, inputs, binary=binary)
            for name in builds:  # warm-up, and the outputs of both builds must agree
                _block(conns[name], request, calls)
            medians: dict[str, list[float]] = {name: [] for name in builds}
            for index in range(rounds):
                order = list(builds) if index % 2 == 0 else list(reversed(builds))
                answers = {}
                for name in order:
                    median, answers[name] = _block(conns[name], request, calls)
                    medians[name].append(median)
                for key, value in answers["baseline"].items():
                    np.testing.assert_allclose(answers["candidate"][key], value, rtol=1e-6)
            per_body[body] = medians
    summary = {
        body: {
            "baseline_ms": statistics.median(m["baseline"]) * 1000,
            "candidate_ms": statistics.median(m["candidate"]) * 1000,
            "ratio": statistics.median(m["candidate"]) / statistics.median(m["baseline"]),
            "rounds_baseline_ms": [round(t * 1000, 4) for t in m["baseline"]],
            "rounds_candidate_ms": [round(t * 1000, 4) for t in m["candidate"]],
        }
        for body, m in per_body.items()
    }
    return {
        "what": "sequential batch-1 end-to-end latency, two builds side by side, medians of "
        "per-round medians",
        "builds": builds,
        "model": model,
        "rounds": rounds,
        "calls_per_block": calls,
        "settings": ENV,
        "machine": describe_machine(),
        "load_average": {"before": load_before, "after": load_average()},
        "results": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_builds", description=__doc__
    )
    parser.add_argument("--baseline", required=True, help="the other build's normserve script")
    parser.add_argument("--candidate", default=None, help="default: this interpreter's")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="digits")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    args = parser.parse_args(argv)
    result = compare(
        args.baseline,
        args.candidate or normserve_command(),
        args.repository,
        args.model,
        args.rounds,
        args.calls,
    )
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    for body, figures in result["results"].items():
        print(
            f"{body:6s} baseline {figures['baseline_ms']:.3f} ms  candidate "
            f"{figures['candidate_ms']:.3f} ms  ratio {figures['ratio']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
