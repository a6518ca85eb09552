"""A server under comparison as a process tree: started in its own process group on 127.0.0.1,
polled until ready with a bounded loop, its CPU read from ``/proc``, stopped by its group id.

Triton runs its Python-backend model in a stub process of its own and KServe may fork, so a
server's CPU is the sum over its whole tree (``utime + stime`` of every live process that
descends from the one started), and stopping it signals the whole group, then waits for every
member to be gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.http_client import HttpError, get
from benchmarks.server_process import HOST

__all__ = [
    "Contender",
    "PeerCommand",
    "process_cpu_seconds",
    "process_tree",
    "running_peer",
    "stop_group",
    "tree_cpu_seconds",
]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class PeerCommand:
    """How to start one server: ``argv`` with ``env`` added to ours, answering HTTP on ``port``.

    ``ports`` names every port it was told to bind (HTTP, gRPC, metrics), all on 127.0.0.1.
    """

    argv: list[str]
    port: int
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ready_path: str = "/v2/health/ready"


@dataclass(frozen=True)
class Contender:
    """A ready server: where it answers and the root of its process tree."""

    name: str
    port: int
    pid: int
    ready_s: float
    log_path: Path
    ports: Mapping[str, int] = field(default_factory=dict)
    # More processes of the same server on their own ports (replicas): the load spreads its
    # connections over all of them and the CPU counts all of them.
    replicas: tuple[Contender, ...] = ()

    @property
    def load_ports(self) -> list[int]:
        return [self.port, *(r.port for r in self.replicas)]

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid) + sum(r.cpu_seconds() for r in self.replicas)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 onwards), or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and every live process descending from it (parent links read from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (0 once it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14, 15 of stat


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of every live process in ``root``'s tree, all threads counted."""
    return sum(process_cpu_seconds(pid) for pid in process_tree(root))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM to the process group ``proc`` leads, up to ``grace_s`` for all of it to end, then
    SIGKILL to whatever is left: nothing this module started outlives the benchmark."""
    pgid = proc.pid  # started with start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_ready(proc: subprocess.Popen[bytes], command: PeerCommand, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, HttpError):
            if get(HOST, command.port, command.ready_path, timeout_s=1.0).status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"not ready after {timeout_s:g} s")


@contextlib.contextmanager
def running_peer(
    name: str,
    command: PeerCommand,
    log_path: Path,
    *,
    ready_timeout_s: float = 180.0,
    stop_grace_s: float = 20.0,
) -> Iterator[Contender]:
    """Start ``command`` in a new process group, wait until ``ready_path`` answers 200, yield
    it, and stop the whole group on exit, always (SIGKILL after ``stop_grace_s``). Output goes
    to ``log_path``."""
    env = {**os.environ, **command.env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            try:
                _wait_ready(proc, command, ready_timeout_s)
            except (RuntimeError, TimeoutError) as exc:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name}: {exc}; its log:\n" + "\n".join(tail)) from None
            ready_s = time.perf_counter() - started
            yield Contender(name, command.port, proc.pid, ready_s, log_path, dict(command.ports))
        finally:
            stop_group(proc, grace_s=stop_grace_s)
