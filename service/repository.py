"""Reading the model repository: ``<root>/<name>/<version>/{model.onnx, model.json}``.

Only what export wrote is trusted: ``model.json`` must be in the ``normserve.model/1`` format and
``model.onnx`` must hash to its recorded ``onnx_sha256``. Hidden names (export's staging
directories) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from normserve.service.datatypes import NUMPY_BY_V2

from normserve.errors import UserError

__all__ = [
    "MODEL_FORMAT",
    "BatchingOverrides",
    "GoldenProbe",
    "ModelConfig",
    "RepositoryError",
    "TensorSpec",
    "VersionEntry",
    "is_model_name",
    "read_entry",
    "scan_model",
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
class BatchingOverrides:
    """``model.json``'s optional ``dynamic_batching`` object; None keeps the server setting."""

    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    queue_timeout_ms: float | None = None


@dataclass(frozen=True)
class GoldenProbe:
    """Inputs recorded at export and the outputs ONNX Runtime gave for them then."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    rtol: float
    atol: float


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
    golden_probe: GoldenProbe | None = None
    batching: BatchingOverrides = field(default_factory=BatchingOverrides)


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

    def fingerprint(self) -> tuple[int, ...]:
        """Changes when either file or the directory itself is replaced (cheap: stat only)."""
        parts: list[int] = []
        for path in (self.path, self.json_path, self.onnx_path):
            try:
                st = path.stat()
            except OSError:
                parts += [-1, -1, -1]
                continue
            parts += [st.st_ino, st.st_mtime_ns, st.st_size]
        return tuple(parts)


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


def _probe_tensors(raw: object, where: str) -> dict[str, np.ndarray]:
    if not isinstance(raw, list) or not raw:
        raise RepositoryError(f"{where} must be a non-empty list of V2 tensors")
    tensors: dict[str, np.ndarray] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise RepositoryError(f"{where} entries must be objects")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or datatype not in NUMPY_BY_V2:
            raise RepositoryError(f"{where}: each tensor needs a name and a V2 datatype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise RepositoryError(f"{where} {name!r}: shape must be non-negative integers")
        try:
            array = np.asarray(item.get("data"), dtype=NUMPY_BY_V2[datatype])
        except (TypeError, ValueError) as exc:
            raise RepositoryError(f"{where} {name!r}: data is not {datatype}: {exc}") from None
        if array.size != math.prod(shape):
            raise RepositoryError(f"{where} {name!r}: {array.size} values for shape {shape}")
        tensors[name] = array.reshape(shape)
    return tensors


def _golden_probe(raw: object, where: str) -> GoldenProbe | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RepositoryError(f"{where} must be an object")
    rtol, atol = raw.get("rtol"), raw.get("atol")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (rtol, atol)):
        raise RepositoryError(f"{where}: rtol and atol must be numbers")
    return GoldenProbe(
        inputs=_probe_tensors(raw.get("inputs"), f"{where}.inputs"),
        outputs=_probe_tensors(raw.get("outputs"), f"{where}.outputs"),
        rtol=float(rtol),  # type: ignore[arg-type]
        atol=float(atol),  # type: ignore[arg-type]
    )


def _batching(raw: object, where: str) -> BatchingOverrides:
    if raw is None:
        return BatchingOverrides()
    if not isinstance(raw, dict):
        raise RepositoryError(f"{where} must be an object")
    unknown = set(raw) - {"max_queue_delay_ms", "max_queue_size", "queue_timeout_ms"}
    if unknown:
        raise RepositoryError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected max_queue_delay_ms, "
            "max_queue_size, queue_timeout_ms"
        )

    def number(key: str, *, integer: bool, low: float, high: float) -> Any:
        value = raw.get(key)
        if value is None:
            return None
        kinds = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            raise RepositoryError(f"{where}.{key} must be a number in [{low:g}, {high:g}]")
        return value

    return BatchingOverrides(
        max_queue_delay_ms=number("max_queue_delay_ms", integer=False, low=0, high=10_000),
        max_queue_size=number("max_queue_size", integer=True, low=1, high=1_000_000),
        queue_timeout_ms=number("queue_timeout_ms", integer=False, low=0.001, high=3_600_000),
    )


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
        golden_probe=_golden_probe(raw.get("golden_probe"), f"{entry.json_path}: golden_probe"),
        batching=_batching(raw.get("dynamic_batching"), f"{entry.json_path}: dynamic_batching"),
    )


def is_model_name(name: str) -> bool:
    """Letters, digits, ``_ . -``, at most 64, not starting with a separator (no ``..``)."""
    return _NAME.fullmatch(name) is not None


def _listing(directory: Path) -> list[Path]:
    """The sorted entries of ``directory``; one that vanished or turned into a file while being
    served is a ``RepositoryError`` like any other unreadable entry, not an ``OSError``."""
    try:
        return sorted(directory.iterdir())
    except OSError as exc:
        raise RepositoryError(f"{directory}: cannot list: {exc.strerror or exc}") from exc


def scan_model(model_dir: Path) -> list[VersionEntry]:
    """The numeric version directories of one model, oldest first."""
    if not _NAME.fullmatch(model_dir.name):
        raise RepositoryError(f"{model_dir}: not a valid model name")
    entries = []
    for version_dir in _listing(model_dir):
        if version_dir.name.startswith(".") or not version_dir.is_dir():
            continue
        name = version_dir.name
        if not (name.isascii() and name.isdigit()) or len(name) > 18 or int(name) < 1:
            raise RepositoryError(f"{version_dir}: versions must be positive integers")
        entries.append(VersionEntry(model_dir.name, int(version_dir.name), version_dir))
    return sorted(entries, key=lambda e: e.version)


def scan_repository(root: Path) -> list[VersionEntry]:
    """Every ``<name>/<version>`` directory with a numeric version, sorted."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist or is not a directory")
    entries = []
    for model_dir in _listing(root):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        entries += scan_model(model_dir)
    return sorted(entries, key=lambda e: (e.name, e.version))
