"""Write one model-repository entry atomically: ``<repo>/<name>/<version>/{model.onnx,model.json}``.

Files go to a hidden temporary directory beside the target, are fsynced, and the directory is
renamed into place, so a reader (the server's repository scan skips hidden names) sees either
no entry or a whole one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from normserve.export.errors import ExportError

__all__ = ["MODEL_FORMAT", "check_name", "next_version", "plan_entry", "write_entry"]

MODEL_FORMAT = "normserve.model/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    """A model name safe as a directory and a URL path segment."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ExportError(
            f"model name {name!r} is invalid: expected 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return name


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric version present, or 1."""
    if not model_dir.is_dir():
        return 1
    versions = [
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and len(p.name) <= 18
    ]
    return max(versions, default=0) + 1


def plan_entry(repository: Path, name: str, version: int | None, force: bool) -> tuple[Path, int]:
    """Resolve the target directory before any work is done, refusing what cannot be written."""
    check_name(name)
    model_dir = repository / name
    if version is None:
        version = next_version(model_dir)
    if version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = model_dir / str(version)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; pass --force to replace it")
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"repository {repository} exists and is not a directory")
    _check_writable(model_dir)
    return target, version


def _check_writable(directory: Path) -> None:
    """Fail before minutes of work, not after, when ``directory`` cannot be created or written.

    Probes the nearest existing ancestor with a hidden temporary directory (the server skips
    hidden names), removed at once; nothing is left behind either way.
    """
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"cannot write to {directory}: {existing} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".normserve-probe-", dir=existing)
    except OSError as exc:
        raise ExportError(f"cannot write to {directory}: {exc.strerror or exc}") from exc
    os.rmdir(probe)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_entry(target: Path, onnx_bytes: bytes, metadata: dict[str, Any], force: bool) -> None:
    """Write both files into a temporary sibling directory and rename it to ``target``."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        _remove_empty(created)
        raise ExportError(f"cannot write to {target.parent}: {exc.strerror or exc}") from exc
    retired: Path | None = None
    try:
        _write_file(staging / "model.onnx", onnx_bytes)
        text = json.dumps(metadata, indent=2, sort_keys=False) + "\n"
        _write_file(staging / "model.json", text.encode())
        os.chmod(staging, 0o755)
        if target.exists():
            if not force:
                raise ExportError(f"{target} already exists; pass --force to replace it")
            retired = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, retired)
        os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and not target.exists():
            os.replace(retired, target)
        _remove_empty(created)
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _remove_empty(directories: list[Path]) -> None:
    """Undo the directories a failed write created (innermost first), if still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return
