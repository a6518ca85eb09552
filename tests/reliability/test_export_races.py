"""Exports racing each other and exports that died mid-write (issue 15).

Several exports of one name at once, none asking for a version, each claim their own next
version: the rename into place succeeds only where no entry is, and the loser takes the next.
Hidden staging directories of an export killed mid-write are removed once stale (older than
ten minutes, their process gone) by the next export and by the server's start.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from normserve.model_repository import STALE_AFTER_S, scan_repository
from tests.service.fake_models import write_entry
from tests.service.process import running_server

NORMSERVE = str(Path(sys.executable).parent / "normserve")
HOUR = 3600.0


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def staging_name(version: int, kind: str, pid: int | None, suffix: str) -> str:
    """An export's hidden directory as the format names it: ``.<version>.<kind>-<pid>-<host>-``
    (the host as the first 8 hex digits of its name's sha256), or the older ``.<version>.tmp-``."""
    if pid is None:
        return f".{version}.{kind}-{suffix}"
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f".{version}.{kind}-{pid}-{host}-{suffix}"


def leave_behind(model_dir: Path, name: str, age_s: float) -> Path:
    """A half-written staging directory, last touched ``age_s`` ago."""
    path = model_dir / name
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"half an onnx file")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_stale_staging_of_killed_exports_is_removed_at_server_start(tmp_path: Path):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    model_dir = root / "affine"
    gone, alive = dead_pid(), os.getpid()
    stale = [
        leave_behind(model_dir, staging_name(2, "tmp", gone, "a1"), HOUR),
        leave_behind(model_dir, staging_name(1, "old", gone, "b2"), HOUR),  # 1 is back in place
        leave_behind(model_dir, staging_name(3, "tmp", None, "c3"), 48 * HOUR),
    ]
    kept = [
        leave_behind(model_dir, staging_name(4, "tmp", gone, "d4"), STALE_AFTER_S / 2),
        leave_behind(model_dir, staging_name(5, "tmp", alive, "e5"), HOUR),  # still writing
        leave_behind(model_dir, staging_name(6, "tmp", None, "f6"), HOUR),  # whose? wait a day
    ]
    with running_server(root, tmp_path / "server.log") as server:
        assert [p for p in stale if p.exists()] == []
        assert [p for p in kept if not p.exists()] == []
        assert "the staging directory of an export that did not finish" in server.log()
    assert [e.version for e in scan_repository(root)] == [1]


def test_an_entry_a_killed_replacement_moved_aside_is_put_back_at_server_start(
    tmp_path: Path,
):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    write_entry(root, "affine", 2)
    model_dir = root / "affine"
    aside = model_dir / staging_name(2, "old", dead_pid(), "g7")
    os.rename(model_dir / "2", aside)  # killed between moving 2 aside and renaming its successor
    then = time.time() - HOUR
    os.utime(aside, (then, then))
    with running_server(root, tmp_path / "server.log"):
        assert not aside.exists()
        assert json.loads((model_dir / "2" / "model.json").read_text())["version"] == 2


_RACER = """
import sys, time
from pathlib import Path
import hashlib
from normserve.model_repository import ModelConfig, TensorSpec, plan_entry, write_entry

repository, start = Path(sys.argv[1]), float(sys.argv[2])
target, version = plan_entry(repository, "m", None, force=False)
data = b"an onnx file"
spec = (TensorSpec("x", "FP32", (-1, 1)),)
config = ModelConfig("m", version, spec, spec, 1, onnx_sha256=hashlib.sha256(data).hexdigest())
while time.time() < start:
    time.sleep(0.001)
written = write_entry(target, data, config, force=False)
print(written.version)
"""


def test_writers_planning_the_same_version_each_claim_their_own(tmp_path: Path):
    """Eight processes plan version 1 of one name, then write at the same instant."""
    repository = tmp_path / "repo"
    start = time.time() + 3.0
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(repository), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(8)
    ]
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 8, [err for _, err in outputs]
    claimed = sorted(int(out) for out, _ in outputs)
    assert claimed == list(range(1, 9))
    for version in claimed:
        metadata = json.loads((repository / "m" / str(version) / "model.json").read_text())
        assert metadata["version"] == version
    assert sorted(p.name for p in (repository / "m").iterdir()) == sorted(map(str, claimed))


def test_exports_of_one_checkpoint_at_once_each_get_their_own_version(
    digits_checkpoint: Path, tmp_path: Path
):
    """The issue's case through the CLI (it ran four; two show it, at half the time): two
    ``normserve export`` of one checkpoint into one name at once both succeed, with versions 1
    and 2 (before, the second failed with "already exists; pass --force"). A stale staging
    directory left by a killed export is removed by them on the way."""
    repository = tmp_path / "repo"
    stale = leave_behind(repository / "digits", staging_name(7, "tmp", dead_pid(), "h8"), HOUR)
    command = [NORMSERVE, "export", str(digits_checkpoint), "--repository", str(repository)]
    command += ["--name", "digits"]
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0] * 2, outputs
    entries = scan_repository(repository)
    assert [(e.name, e.version) for e in entries] == [("digits", 1), ("digits", 2)]
    for entry in entries:
        assert json.loads(entry.json_path.read_text())["version"] == entry.version
    assert not stale.exists()
    assert [p.name for p in (repository / "digits").iterdir() if p.name.startswith(".")] == []
