"""The Makefile installs what each command needs: `make run` the serving and export extras
only, `make test` the dev extra on top, each with its own stamp in the shared .venv. Read from
`make --dry-run` in a scratch copy, so nothing is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The files the Makefile reads, as in a fresh clone (no .venv)."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def dry_run(folder: Path, target: str) -> list[str]:
    # Run as a top-level make even when the suite itself runs under `make test` (CI): a
    # nested make would print "Entering/Leaving directory" lines around the commands.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    result = subprocess.run(
        ["make", "--no-print-directory", "--dry-run", target],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def extras_installed(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines for m in re.finditer(r"-e '\.\[([a-z,]*)\]'", line)]


def test_make_run_installs_only_serving_and_export(clone: Path):
    lines = dry_run(clone, "run")
    assert extras_installed(lines) == ["export"]
    assert any("venv .venv" in line for line in lines)  # from nothing
    assert lines[-1].startswith("exec .venv/bin/normserve serve")


def test_make_test_adds_dev(clone: Path):
    lines = dry_run(clone, "test")
    assert extras_installed(lines) == ["export", "export,dev"]
    assert lines[-1] == ".venv/bin/pytest"


def test_each_install_has_its_own_stamp(clone: Path):
    stamps = [
        line.split()[-1] for line in dry_run(clone, "test") if line.startswith("touch .venv/")
    ]
    assert len(stamps) == len(set(stamps)) == 2
    # After `make run`: its stamp is there, so `make test` adds dev only, and `make run`
    # installs nothing more.
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").touch()
    (clone / stamps[0]).touch()
    assert extras_installed(dry_run(clone, "test")) == ["export,dev"]
    assert extras_installed(dry_run(clone, "run")) == []
