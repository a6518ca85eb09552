"""Reading the model repository: ``<root>/<name>/<version>/{model.onnx, model.json}``.

Only what export wrote is trusted: ``model.json`` must be in the ``normserve.model/1`` format and
``model.onnx`` must hash to its recorded ``onnx_sha256``. Hidden names (export's staging
directories) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normserve.errors import UserError
from service.datatypes import NUMPY_BY_V2

__all__ = [
    "MODEL_FORMAT",
    "ModelConfig",
    "RepositoryError",
    "TensorSpec",
    "VersionEntry",
    "read_entry",
    "scan_repository",
]

MODEL_FORMAT = "normserve.model/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RepositoryError(UserError):
    """A repository entry that cannot be served; the message names the file and the problem."""


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor; ``shape`` includes the batch axis as -1."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    version: int
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    labels: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    onnx_sha256: str = ""
    export: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionEntry:
    """One version directory found on disk."""

    name: str
    version: int
    path: Path

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def json_path(self) -> Path:
        return self.path / "model.json"


def _tensor_specs(raw: object, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise RepositoryError(f"{where} must be a non-empty list")
    specs = []
    for item in raw:
        if not isinstance(item, dict):
            raise RepositoryError(f"{where} entries must be objects")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise RepositoryError(f"{where}: 'name' must be a non-empty string")
        if datatype not in NUMPY_BY_V2:
            raise RepositoryError(f"{where} {name!r}: unsupported datatype {datatype!r}")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape)
            or shape[0] != -1
        ):
            raise RepositoryError(
                f"{where} {name!r}: shape must be a list of positive ints with -1 first (batch), "
                f"got {shape!r}"
            )
        specs.append(TensorSpec(name=name, datatype=datatype, shape=tuple(shape)))
    return tuple(specs)


def read_entry(entry: VersionEntry) -> ModelConfig:
    """Parse and check ``model.json`` and the hash of ``model.onnx``."""
    try:
        raw = json.loads(entry.json_path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{entry.json_path}: cannot read JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
        raise RepositoryError(f"{entry.json_path}: expected format {MODEL_FORMAT!r}")
    if raw.get("name") != entry.name or raw.get("version") != entry.version:
        raise RepositoryError(
            f"{entry.json_path}: records {raw.get('name')!r} version {raw.get('version')!r}, "
            f"but lies in {entry.name}/{entry.version}"
        )
    max_batch = raw.get("max_batch_size")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise RepositoryError(f"{entry.json_path}: max_batch_size must be a positive integer")
    expected_sha = raw.get("onnx_sha256")
    try:
        actual_sha = hashlib.sha256(entry.onnx_path.read_bytes()).hexdigest()
    except OSError as exc:
        raise RepositoryError(f"{entry.onnx_path}: cannot read: {exc.strerror or exc}") from exc
    if expected_sha != actual_sha:
        raise RepositoryError(
            f"{entry.onnx_path}: sha256 {actual_sha[:12]}… does not match model.json's "
            f"onnx_sha256 {str(expected_sha)[:12]}…"
        )
    labels = raw.get("labels")
    return ModelConfig(
        name=entry.name,
        version=entry.version,
        platform=str(raw.get("platform", "onnxruntime_onnx")),
        inputs=_tensor_specs(raw.get("inputs"), f"{entry.json_path}: inputs"),
        outputs=_tensor_specs(raw.get("outputs"), f"{entry.json_path}: outputs"),
        max_batch_size=max_batch,
        labels=labels if isinstance(labels, list) else None,
        preprocess=raw.get("preprocess") if isinstance(raw.get("preprocess"), dict) else None,
        onnx_sha256=actual_sha,
        export=raw.get("export") if isinstance(raw.get("export"), dict) else {},
    )


def scan_repository(root: Path) -> list[VersionEntry]:
    """Every ``<name>/<version>`` directory with a numeric version, sorted."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory")
    entries = []
    for model_dir in sorted(root.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        if not _NAME.fullmatch(model_dir.name):
            raise RepositoryError(f"{model_dir}: not a valid model name")
        for version_dir in sorted(model_dir.iterdir()):
            if version_dir.name.startswith(".") or not version_dir.is_dir():
                continue
            if not version_dir.name.isdigit() or int(version_dir.name) < 1:
                raise RepositoryError(f"{version_dir}: versions must be positive integers")
            entries.append(VersionEntry(model_dir.name, int(version_dir.name), version_dir))
    return sorted(entries, key=lambda e: (e.name, e.version))
