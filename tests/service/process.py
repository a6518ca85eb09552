"""Starting and stopping a real ``normserve serve`` on a free loopback port, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    host_port: str
    proc: subprocess.Popen
    log_path: Path
    grpc_target: str | None = None  # host:port of the gRPC server, when started with grpc=True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``predicate`` every 50 ms until it returns a truthy value or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} while waiting: {what}")
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting: {what}")


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended: no such process, or only its exit status left (a
    zombie, which still answers ``kill(pid, 0)``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@contextmanager
def running_server(
    repository: Path, log_path: Path, env: dict[str, str] | None = None, *, grpc: bool = False
) -> Iterator[Server]:
    """A server on a free port, ready; always stopped (SIGKILL if it outlives the test).

    ``grpc`` also serves gRPC on another free port (up before HTTP answers ready)."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    command = [
        str(Path(sys.executable).parent / "normserve"),
        "serve",
        "--repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    full_env = {**os.environ, "NORMSERVE_PROVIDER": "cpu", **(env or {})}
    if grpc_port is not None:
        full_env["NORMSERVE_GRPC_PORT"] = str(grpc_port)
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200,
            60,
            "ready",
            proc,
        )
        grpc_target = f"127.0.0.1:{grpc_port}" if grpc_port is not None else None
        yield Server(url, f"127.0.0.1:{port}", proc, log_path, grpc_target)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
