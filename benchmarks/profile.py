"""Profiles behind docs/benchmarks.md's explanation of a missed target (not part of ``make bench``).

``python -m benchmarks.profile server [--arch digits_cnn] [--body binary] [--seconds 8]
[--connections 1]``
    py-spy samples a real ``normserve serve`` (GIL-holding frames only) while one client sends
    sequential batch-1 requests (or, with ``--connections N`` above 1, a closed loop of N
    connections: the server under load); writes a summary of the frames where the time goes to
    ``benchmarks/results/profile-server-<arch>-<body>[-cN].txt``.
``python -m benchmarks.profile decode``
    pyinstrument over the service's JSON decode of a 1x3x224x224 FP32 request; writes
    ``benchmarks/results/profile-decode-json.txt``.

py-spy attaches with ptrace: it needs root or ``CAP_SYS_PTRACE`` (a container may deny it).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.context import RESULTS_DIR

__all__ = ["main", "summarize_stacks"]


def summarize_stacks(raw: str, top: int = 40) -> str:
    """py-spy ``--format raw`` (collapsed stacks) → inclusive and self shares per function."""
    stacks: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    total = sum(stacks.values()) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()

    def name(frame: str) -> str:
        function, _, where = frame.partition(" (")
        return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]}" + (")" if where else "")

    for stack, count in stacks.items():
        frames = [name(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    trunk = [f for f, c in inclusive.items() if c >= 0.99 * total]  # the process's entry frames
    lines = [f"{total} samples of the GIL-holding thread", "", "inclusive (below the trunk):"]
    lines += [
        f"{100 * c / total:6.1f}%  {f}"
        for f, c in inclusive.most_common(top + len(trunk))
        if f not in trunk
    ][:top]
    lines += ["", "self:"]
    lines += [f"{100 * c / total:6.1f}%  {f}" for f, c in own.most_common(top // 2)]
    return "\n".join(lines) + "\n"


def _profile_server(
    arch: str, body: str, seconds: float, out_dir: Path, connections: int = 1
) -> Path:
    from benchmarks.bench_models import Workspace
    from benchmarks.features import env_for
    from benchmarks.http_client import HttpConnection
    from benchmarks.loadgen import run_load
    from benchmarks.server_process import HOST, running_server
    from benchmarks.v2_payload import infer_request

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="normserve-profile-"))
    try:
        workspace = Workspace(work)
        bench = workspace.model(arch)
        repository = workspace.repository_of("profile", [arch])
        feed = {bench.checkpoint.input.name: bench.inputs[:1].numpy()}
        env = env_for({"provider": "cpu", "log_level": "warning"})
        with running_server(repository, work / "server.log", env=env) as server:
            request = infer_request(
                f"{HOST}:{server.port}", bench.name, feed, binary=body == "binary"
            )
            stop = threading.Event()
            count = [0]

            def drive() -> None:
                if connections > 1:
                    result = run_load(
                        HOST,
                        server.port,
                        request,
                        concurrency=connections,
                        duration_s=seconds + 1.5,
                        timeout_s=seconds + 60,
                    )
                    if set(result.statuses) != {200}:
                        raise RuntimeError(f"inference failed while profiling: {result.statuses}")
                    count[0] = result.completed
                    return
                with HttpConnection(HOST, server.port) as conn:
                    while not stop.is_set():
                        if conn.request(request).status != 200:
                            raise RuntimeError("inference failed while profiling")
                        count[0] += 1

            thread = threading.Thread(target=drive, daemon=True)
            thread.start()
            raw_path = work / "stacks.txt"
            try:
                time.sleep(0.5)
                subprocess.run(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(server.process.pid),
                        "--duration",
                        str(int(seconds)),
                        "--rate",
                        "500",
                        "--gil",
                        "--format",
                        "raw",
                        "-o",
                        str(raw_path),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=seconds + 60,
                )
            finally:
                stop.set()
                thread.join(timeout=30)
        suffix, load = (
            (f"-c{connections}", f"{connections} connections of batch-1")
            if connections > 1
            else ("", "sequential batch-1")
        )
        out = out_dir / f"profile-server-{arch}-{body}{suffix}.txt"
        header = (
            f"py-spy --gil, {seconds:.0f} s of {load} {body} requests to {arch} "
            f"({count[0]} requests answered while sampling slowed the server)\n"
        )
        out.write_text(header + summarize_stacks(raw_path.read_text()))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _profile_decode(out_dir: Path) -> Path:
    import numpy as np
    from pyinstrument import Profiler

    from benchmarks.bare import load_served_model
    from benchmarks.bench_models import PAYLOAD_ARCH, Workspace
    from benchmarks.decode import _decoder
    from benchmarks.v2_payload import json_body

    work = Path(tempfile.mkdtemp(prefix="normserve-profile-"))
    try:
        workspace = Workspace(work)
        bench = workspace.model(PAYLOAD_ARCH)
        repository = workspace.repository_of("decode", [PAYLOAD_ARCH])
        model = load_served_model(repository / bench.name / "1", {"provider": "cpu"})
        decode, path = _decoder(model)
        body = json_body({bench.checkpoint.input.name: bench.inputs[:1].numpy()})
        decode(body, None)
        profiler = Profiler(interval=0.0002)
        with profiler:
            for _ in range(30):
                arrays = decode(body, None)
        assert np.isfinite(next(iter(arrays.values()))).all()
        out = out_dir / "profile-decode-json.txt"
        out.write_text(
            f"pyinstrument, 30 JSON decodes of 1x3x224x224 FP32 via {path}\n\n"
            + profiler.output_text(unicode=True, color=False, show_all=True)
        )
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("what", choices=["server", "decode"])
    parser.add_argument("--arch", default="digits_cnn")
    parser.add_argument("--body", choices=["binary", "json"], default="binary")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.what == "server":
        out = _profile_server(args.arch, args.body, args.seconds, args.results, args.connections)
    else:
        out = _profile_decode(args.results)
    print(out.read_text())
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
