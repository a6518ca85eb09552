"""Hostile clients against a real server: what each attack costs everyone else.

Each attack runs beside a well-behaved client that sends one small verified inference every
5 ms over its own keep-alive connection. Its latencies are summarized per phase (a quiet
baseline, the attack, then a quiet phase after the attacker left), with every failure counted;
the server's resident memory (``VmRSS``) is sampled every 50 ms. The attacks are the ones
issue 15 reported:

- ``header_16m``/``header_64m``: one request with a 16 MiB / 64 MiB header;
- ``pipeline``: ten keep-alive connections pipelining batch-64 requests, never reading;
- ``big_bodies``: eight clients at once sending bodies that must be refused (a gzip body that
  inflates past the body limit, a large invalid JSON body);
- ``slow_header``/``slow_body``: a request head, or a 1 MiB body, dribbled a byte at a time
  (the figure is how long the server held the connection);
- ``connections``: 2,000 connections open at once, each used once, then all closed.

``python -m benchmarks.hostile [--quick] [--only header_16m,pipeline,...]`` writes
``benchmarks/results/hostile.json`` and ``hostile.png``. Everything talks to 127.0.0.1 only and
every process and thread it starts ends with it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from benchmarks.context import RESULTS_DIR, Context, run_benchmark
from benchmarks.http_client import HttpConnection, HttpError, ResponseParser, encode_request
from benchmarks.server_process import HOST, running_server
from benchmarks.stats import summarize_latencies
from benchmarks.v2_payload import decode_response, infer_request
from normserve.model_repository import ModelConfig, TensorSpec, write_entry

__all__ = ["ATTACKS", "NAME", "chart", "measure"]

NAME = "hostile"
MODEL = "dense"
FEATURES = 64
MAX_BODY_BYTES = 64 * 1024 * 1024
SERVER = {
    "NORMSERVE_PROVIDER": "cpu",
    "NORMSERVE_LOG_LEVEL": "warning",
    "NORMSERVE_ACCESS_LOG": "false",
    "NORMSERVE_INTRA_OP_THREADS": "1",
}
PACE_S = 0.005
# The slow attacks last past the default head and body timeouts (30 s), to see them cut off.
LONGER = {"slow_header": 40.0, "slow_body": 40.0}
RNG_SEED = 15


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    return (
        rng.standard_normal((FEATURES, 10)).astype(np.float32),
        rng.standard_normal(10).astype(np.float32),
    )


def write_model(repository: Path) -> None:
    """``dense``: x (N, 64) FP32 → y = x @ W + b (N, 10), at most 64 samples a request."""
    w, b = _weights()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    data = model.SerializeToString()
    config = ModelConfig(
        name=MODEL,
        version=1,
        inputs=(TensorSpec("x", "FP32", (-1, FEATURES)),),
        outputs=(TensorSpec("y", "FP32", (-1, 10)),),
        max_batch_size=64,
        onnx_sha256=hashlib.sha256(data).hexdigest(),
    )
    write_entry(repository / MODEL / "1", data, config, force=True)


# -- the well-behaved client -------------------------------------------------------------------


@dataclass
class Observer:
    """One paced client and the memory sampler; ``mark`` starts a new phase."""

    port: int
    pid: int
    phase: str = "baseline"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    rss: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.started = time.perf_counter()
        for target in (self._client, self._sampler):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def mark(self, phase: str) -> None:
        self.phase = phase

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self) -> None:
        w, b = _weights()
        rng = np.random.default_rng(0)
        conn: HttpConnection | None = None
        while not self._stop.is_set():
            x = rng.standard_normal((1, FEATURES)).astype(np.float32)
            raw = infer_request(f"{HOST}:{self.port}", MODEL, {"x": x}, binary=False)
            phase = self.phase
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = HttpConnection(HOST, self.port, timeout_s=30.0)
                response = conn.request(raw)
                elapsed = time.perf_counter() - start
                y = decode_response(response)["y"]
                np.testing.assert_allclose(y, x @ w + b, rtol=1e-4, atol=1e-4)
                self.latencies.setdefault(phase, []).append(elapsed)
            except (OSError, HttpError, ValueError, AssertionError) as exc:
                self.failures.setdefault(phase, []).append(str(exc)[:120])
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, PACE_S - (time.perf_counter() - start)))
        if conn is not None:
            conn.close()

    def _sampler(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        kib = int(line.split()[1])
                        self.rss.append((time.perf_counter() - self.started, self.phase, kib))
            except OSError:
                return
            self._stop.wait(0.05)

    def summary(self) -> dict[str, Any]:
        phases: dict[str, Any] = {}
        for phase in ("baseline", "attack", "after"):
            lat = sorted(self.latencies.get(phase, []))
            rss = [kib for _, p, kib in self.rss if p == phase]
            phases[phase] = {
                "requests": len(lat),
                "failures": len(self.failures.get(phase, [])),
                "failure_examples": sorted(set(self.failures.get(phase, [])))[:3],
                "latency_ms": summarize_latencies(lat).to_dict() if lat else None,
                "rss_mib_max": round(max(rss) / 1024, 1) if rss else None,
                "rss_mib_last": round(rss[-1] / 1024, 1) if rss else None,
            }
        return phases


# -- attacks: each runs for about ``seconds`` and returns what it saw ----------------------------


def _connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_one(sock: socket.socket, timeout_s: float) -> tuple[int | None, float]:
    """The status of the next response (None when the server closed without one) and when."""
    parser = ResponseParser()
    start = time.perf_counter()
    deadline = start + timeout_s
    while time.perf_counter() < deadline:
        sock.settimeout(max(0.01, deadline - time.perf_counter()))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            break
        except OSError:
            return None, time.perf_counter() - start
        if not data:
            return None, time.perf_counter() - start
        done = parser.feed(data)
        if done:
            return done[0].status, time.perf_counter() - start
    return None, time.perf_counter() - start


def _big_header(size: int) -> Callable[[int, float], dict[str, Any]]:
    def attack(port: int, seconds: float) -> dict[str, Any]:
        head = f"GET /v2/health/live HTTP/1.1\r\nHost: {HOST}\r\nX-Pad: ".encode()
        statuses: list[int | None] = []
        with _connect(port, timeout_s=60) as sock:
            try:
                sock.sendall(head)
                chunk = b"a" * (1 << 20)
                for _ in range(size >> 20):
                    sock.sendall(chunk)
                sock.sendall(b"\r\n\r\n")
            except OSError:
                pass  # the server refused and closed before the header was sent in full
            statuses.append(_read_one(sock, 60)[0])
        time.sleep(max(0.0, seconds - 1))
        return {"statuses": statuses}

    return attack


def _pipeline(port: int, seconds: float) -> dict[str, Any]:
    x = np.random.default_rng(1).standard_normal((64, FEATURES)).astype(np.float32)
    raw = infer_request(f"{HOST}:{port}", MODEL, {"x": x}, binary=False)
    burst = raw * 32
    sent = [0] * 10
    deadline = time.perf_counter() + seconds

    def one(index: int) -> None:
        with _connect(port) as sock:
            sock.settimeout(0.2)
            while time.perf_counter() < deadline and sent[index] < 200 << 20:
                try:
                    sent[index] += sock.send(burst)
                except TimeoutError:
                    continue
                except OSError:
                    return

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return {"sent_mib": round(sum(sent) / (1 << 20), 1), "request_bytes": len(raw)}


def _big_bodies(port: int, seconds: float) -> dict[str, Any]:
    bomb = zlib.compress(b"\0" * (MAX_BODY_BYTES + (8 << 20)), 9)
    gzip_request = encode_request(
        "POST",
        f"/v2/models/{MODEL}/infer",
        host=HOST,
        body=bomb,
        headers={"Content-Encoding": "deflate"},
    )
    numbers = b",".join([b"0.123456"] * ((MAX_BODY_BYTES - (1 << 20)) // 9))
    head = b'{"inputs":[{"name":"x","shape":[1,64],"datatype":"FP32","data":['
    invalid = head + numbers + b",]}]}"  # one trailing comma: invalid only at the very end
    json_request = encode_request("POST", f"/v2/models/{MODEL}/infer", host=HOST, body=invalid)
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def one(raw: bytes) -> None:
        while time.perf_counter() < deadline:
            try:
                with _connect(port, timeout_s=60) as sock:
                    sock.sendall(raw)
                    status = _read_one(sock, 60)[0]
            except OSError:
                status = None
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1

    threads = [
        threading.Thread(target=one, args=(gzip_request if i % 2 else json_request,), daemon=True)
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    return {"statuses": statuses, "json_mib": round(len(invalid) / (1 << 20), 1)}


def _dribble(head: bytes, body_bytes: int) -> Callable[[int, float], dict[str, Any]]:
    """Send ``head``'s first half (or the whole head, then ``body_bytes`` of body) a byte every
    0.2 s; the figure is how long the server kept each of 20 connections open."""

    def attack(port: int, seconds: float) -> dict[str, Any]:
        held: list[float] = []
        answers: list[int | None] = []
        lock = threading.Lock()

        def one() -> None:
            start = time.perf_counter()
            with _connect(port) as sock:
                prefix = head if body_bytes else head[: len(head) // 2]
                payload = b"1" * body_bytes if body_bytes else head[len(head) // 2 :]
                status = None
                try:
                    sock.sendall(prefix)
                    for byte in payload:
                        if time.perf_counter() - start > seconds:
                            break
                        sock.sendall(bytes([byte]))
                        sock.settimeout(0.2)
                        try:
                            data = sock.recv(1 << 16)
                        except TimeoutError:
                            continue
                        if data:
                            status = int(data.split(b" ", 2)[1])
                        break
                except OSError:
                    pass
            with lock:
                held.append(time.perf_counter() - start)
                answers.append(status)

        threads = [threading.Thread(target=one, daemon=True) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        return {
            "held_s_max": round(max(held), 1),
            "held_s_min": round(min(held), 1),
            "cut_off": sum(h < seconds - 0.5 for h in held),
            "statuses": sorted({str(a) for a in answers}),
        }

    return attack


def _connections(port: int, seconds: float) -> dict[str, Any]:
    """2,000 connections open at once, each asks once, then all close."""
    raw = encode_request("GET", "/v2/health/live", host=HOST)
    socks = [_connect(port) for _ in range(2000)]
    for sock in socks:
        sock.sendall(raw)
    ok = sum(_read_one(sock, 30)[0] == 200 for sock in socks)
    for sock in socks:
        sock.close()
    time.sleep(max(0.0, seconds - 1))
    return {"answered_200": ok}


ATTACKS: dict[str, Callable[[int, float], dict[str, Any]]] = {
    "header_16m": _big_header(16 << 20),
    "header_64m": _big_header(64 << 20),
    "pipeline": _pipeline,
    "big_bodies": _big_bodies,
    "slow_header": _dribble(
        b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        + b"s" * 1000
        + b"\r\n\r\n",
        0,
    ),
    "slow_body": _dribble(
        b"POST /v2/models/dense/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 1048576\r\n\r\n",
        1 << 20,
    ),
    "connections": _connections,
}


def run_attack(name: str, repository: Path, log_dir: Path, quiet_s: float, attack_s: float) -> dict:
    """One server, one observer, and the attack from another process (its threads must not
    take the observer's interpreter lock)."""
    with running_server(repository, log_dir / f"{name}.log", env=SERVER) as server:
        observer = Observer(server.port, server.process.pid)
        observer.start()
        time.sleep(quiet_s)
        observer.mark("attack")
        started = time.perf_counter()
        command = [sys.executable, "-m", "benchmarks.hostile", "--attack", name]
        command += ["--port", str(server.port), "--seconds", str(attack_s)]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=attack_s + 300, check=True
        )
        seen = json.loads(done.stdout)
        attack_wall = time.perf_counter() - started
        observer.mark("after")
        time.sleep(quiet_s)
        observer.stop()
        return {
            "attack": seen,
            "attack_s": round(attack_wall, 1),
            "phases": observer.summary(),
            "server_alive": server.process.poll() is None,
        }


def measure(ctx: Context, only: list[str] | None = None) -> dict[str, Any]:
    repository = ctx.work_dir / "hostile-repository"
    write_model(repository)
    quiet_s, attack_s = ctx.pick((5.0, 20.0), (2.0, 5.0))
    results = {}
    for name in only or list(ATTACKS):
        ctx.log(f"   {name}")
        seconds = attack_s if ctx.quick else max(attack_s, LONGER.get(name, 0.0))
        results[name] = run_attack(name, repository, ctx.work_dir, quiet_s, seconds)
    return {"pace_ms": PACE_S * 1000, "quiet_s": quiet_s, "attack_s": attack_s, "attacks": results}


def chart(result: dict[str, Any], path: Path) -> bool:
    """Per attack: the well-behaved client's p99 and the server's peak memory, quiet and under
    attack (and under the same attack before the change, when ``result["before"]`` has it)."""
    from benchmarks.charts import figure, save

    attacks = result["attacks"]
    before = result.get("before", {}).get("attacks", {})
    names = list(attacks)
    if not names:
        return False
    bars = [("quiet", attacks, "baseline", "#9ecae1")]
    if before:
        bars.append(("attack, before", before, "attack", "#d62728"))
    bars.append(("attack" + (", after" if before else ""), attacks, "attack", "#2ca02c"))
    fig, axes = figure(1, 2, width=7.0)
    xs = np.arange(len(names))
    width = 0.8 / len(bars)
    for i, (label, source, phase, color) in enumerate(bars):
        rows = [source.get(n, {}).get("phases", {}).get(phase, {}) for n in names]
        p99 = [(r.get("latency_ms") or {}).get("p99", 0.0) for r in rows]
        rss = [r.get("rss_mib_max") or 0.0 for r in rows]
        offset = (i - (len(bars) - 1) / 2) * width
        axes[0][0].bar(xs + offset, p99, width, label=label, color=color)
        axes[0][1].bar(xs + offset, rss, width, label=label, color=color)
    for ax, label in ((axes[0][0], "well-behaved client p99 (ms, log)"),
                      (axes[0][1], "server RSS, peak in phase (MiB)")):  # fmt: skip
        ax.set_xticks(xs, names, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.legend()
    axes[0][0].set_yscale("log")
    save(fig, path, "Hostile clients: what one attacker costs everyone else", result)
    return True


def merge(runs: list[Path], before: list[Path], out: Path) -> None:
    """One record from several runs (later ones replace an attack of earlier ones), with the
    runs of the code before the change under ``before``; writes ``out`` and its chart."""

    def attacks(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
        merged: dict[str, Any] = {}
        last: dict[str, Any] = {}
        for path in paths:
            last = json.loads(path.read_text())
            merged.update(last["attacks"])
        return last, merged

    result, merged = attacks(runs)
    result["attacks"] = merged
    if before:
        old, old_attacks = attacks(before)
        result["before"] = {"created": old["created"], "attacks": old_attacks}
    out.write_text(json.dumps(result, indent=2) + "\n")
    chart(result, out.with_suffix(".png"))


class _Bench:
    NAME = NAME

    def __init__(self, only: list[str] | None) -> None:
        self.only = only

    def measure(self, ctx: Context) -> dict[str, Any]:
        return measure(ctx, self.only)

    def chart(self, result: dict[str, Any], path: Path) -> bool:
        return chart(result, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {list(ATTACKS)}")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--attack", default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="merge these result files (later replace earlier) into --results/hostile.json",
    )
    parser.add_argument(
        "--before", nargs="*", type=Path, default=[], help="with --merge: runs of the old code"
    )
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.before, (args.results or RESULTS_DIR) / f"{NAME}.json")
        return 0
    if args.attack is not None:
        print(json.dumps(ATTACKS[args.attack](args.port, args.seconds)))
        return 0
    only = [n.strip() for n in args.only.split(",") if n.strip()] or None
    unknown = sorted(set(only or []) - set(ATTACKS))
    if unknown:
        print(f"error: unknown attack(s) {unknown}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="normserve-hostile-") as work:
        ctx = Context(quick=args.quick, work_dir=Path(work))
        if args.results is not None:
            ctx.results_dir = args.results
        run_benchmark(ctx, _Bench(only))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
