"""Start a real ``normserve serve`` on a free loopback port, time it to ready, always stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.http_client import HttpError, get

__all__ = [
    "ServerProcess",
    "free_port",
    "memory_kib",
    "normserve_command",
    "running_server",
    "stop_process",
    "thread_cpu_seconds",
]

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def normserve_command() -> str:
    """The ``normserve`` console script of the interpreter running the benchmarks."""
    script = Path(sys.executable).parent / "normserve"
    if not script.exists():
        raise FileNotFoundError(f"{script} is missing: install the project (make .venv/.installed)")
    return str(script)


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of a process, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0])
    return fields


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process: its main thread (``main``: the event loop of a
    uvicorn server) and all its other threads together (``other``: ONNX Runtime's pools, the
    batcher's worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"main": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        out["main" if task.name == str(pid) else "other"] += seconds
    return out


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    started_at: float  # perf_counter just before Popen
    ready_s: float  # from Popen to the first 200 from /v2/health/ready
    log_path: Path

    host: str = HOST

    def memory_kib(self) -> dict[str, int]:
        return memory_kib(self.process.pid)

    def cpu_seconds(self) -> dict[str, float]:
        return thread_cpu_seconds(self.process.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float, poll_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, HttpError):
            if get(HOST, port, "/v2/health/ready", timeout_s=1.0).status == 200:
                return
        time.sleep(poll_s)
    raise TimeoutError(f"server not ready after {timeout_s} s")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, grace_s: float = 15.0
) -> None:
    """Send ``sig``, wait up to ``grace_s``, then kill: every process a benchmark starts ends."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    repository: Path,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120.0,
    poll_s: float = 0.002,
    executable: str | None = None,
) -> Iterator[ServerProcess]:
    """``normserve serve --repository R`` on a free 127.0.0.1 port; stopped on exit, always.

    ``env`` adds ``NORMSERVE_*`` settings. Output goes to ``log_path`` (a pipe nobody reads
    would stall the server once full). ``executable`` runs another build's ``normserve``
    (``benchmarks.compare_builds``); the default is this interpreter's.
    """
    port = free_port()
    command = [executable or normserve_command(), "serve", "--repository", str(repository)]
    command += ["--host", HOST, "--port", str(port)]
    full_env = {**os.environ, **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        try:
            try:
                _wait_ready(proc, port, ready_timeout_s, poll_s)
            except (RuntimeError, TimeoutError) as exc:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{exc}; server log:\n" + "\n".join(tail)) from None
            ready = time.perf_counter() - started
            yield ServerProcess(proc, port, started, ready, log_path)
        finally:
            stop_process(proc)
