"""Each peer server in a virtual environment of its own, built once and stamped.

The peers never enter the project's ``.venv``: Triton's wheel alone is hundreds of megabytes and
pins numpy below 2, KServe pulls in its own FastAPI and Kubernetes client. Each lives under
``.venv-peers/<name>`` (or ``$NORMSERVE_BENCH_PEERS_DIR/<name>``), created with this
interpreter's Python and stamped with what was installed: a second run with the same
requirements reuses it, changed requirements rebuild it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "PEERS_DIR",
    "VenvSpec",
    "ensure_venv",
    "is_current",
    "onnxruntime_requirement",
    "package_versions",
    "shared_libraries",
]

PEERS_DIR = Path(
    os.environ.get("NORMSERVE_BENCH_PEERS_DIR")
    or Path(__file__).resolve().parent.parent.parent / ".venv-peers"
)
STAMP = ".normserve-peer-stamp.json"
PIP_TIMEOUT_S = 1800.0


def onnxruntime_requirement() -> str:
    """The ONNX Runtime the project runs, pinned, so every server runs the same kernels."""
    for package in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return f"onnxruntime=={metadata.version(package)}"
        except metadata.PackageNotFoundError:
            continue
    return "onnxruntime"


@dataclass(frozen=True)
class VenvSpec:
    """A named environment and the requirements installed into it."""

    name: str
    requirements: tuple[str, ...]

    def path(self, root: Path | None = None) -> Path:
        return (root or PEERS_DIR) / self.name

    def stamp(self) -> str:
        python = ".".join(map(str, sys.version_info[:3]))
        record = {"requirements": list(self.requirements), "python": python}
        return json.dumps(record, sort_keys=True)


def is_current(spec: VenvSpec, root: Path | None = None) -> bool:
    """The environment exists and was built for exactly these requirements and Python."""
    path = spec.path(root)
    try:
        stamp = (path / STAMP).read_text()
    except OSError:
        return False
    return stamp == spec.stamp() and (path / "bin" / "python").exists()


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def ensure_venv(
    spec: VenvSpec, root: Path | None = None, *, log: Callable[[str], None] = print
) -> Path:
    """The environment for ``spec``, built (``python -m venv`` + ``pip install``) only when its
    stamp is missing or different. The stamp is written last: an interrupted build is redone."""
    path = spec.path(root)
    if is_current(spec, root):
        return path
    log(f"   building {path}: pip install {' '.join(spec.requirements)} (once; stamped)")
    (path / STAMP).unlink(missing_ok=True)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", str(path)], f"python -m venv {path}")
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "--disable-pip-version-check", *spec.requirements], f"pip install into {path}")
    staged = path / (STAMP + ".tmp")
    staged.write_text(spec.stamp())
    staged.replace(path / STAMP)
    return path


def package_versions(venv: Path, packages: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of ``packages`` inside ``venv`` (None for one that is absent)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "def v(p):\n"
        "    try:\n        return m.version(p)\n"
        "    except m.PackageNotFoundError:\n        return None\n"
        "print(json.dumps({p: v(p) for p in sys.argv[1:]}))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *packages],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return dict(json.loads(done.stdout))


def shared_libraries(binary: Path, env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """What ``ldd`` resolves each shared library of ``binary`` to (None: not found)."""
    done = subprocess.run(
        ["ldd", str(binary)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ldd {binary} failed: {(done.stdout + done.stderr).strip()[:300]}")
    libraries: dict[str, str | None] = {}
    for line in done.stdout.splitlines():
        name, arrow, target = line.strip().partition(" => ")
        if not arrow:
            continue  # the vDSO and the dynamic loader itself
        target = target.strip()
        libraries[name] = None if target.startswith("not found") else target.split(" (")[0]
    return libraries
