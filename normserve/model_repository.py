"""The model repository format: the one contract between export and service.

``<repository>/<name>/<version>/{model.onnx, model.json}``. Export writes entries through this
module, the server, ``normserve verify`` and the tests read them through it; numpy and the
standard library only, so the torch-free serving install imports it. Over 300 lines because
it is one contract, so every rule of the format lives here:

- the format string, the model name rule, the version rule (ASCII digits, at most 18);
- the one datatype table: V2 name ↔ numpy ↔ ONNX (ORT type string and TensorProto code) ↔
  Triton config name;
- ``model.json`` as typed objects (``TensorSpec``, ``GoldenProbe``, ``BatchingOverrides``,
  ``ModelConfig``), parsed strictly and written back in one shape;
- scanning a repository, and writing one entry atomically (staging directory + rename): an
  export that chose no version claims the next free one at the rename, retrying with the
  next when another export took it, and staging directories that a killed export left behind
  are removed by the next export and by the server's start (``remove_stale_staging``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from normserve.errors import UserError

__all__ = [
    "DATATYPES",
    "MODEL_FORMAT",
    "PLATFORM",
    "BatchingOverrides",
    "DataType",
    "GoldenProbe",
    "ModelConfig",
    "RepositoryError",
    "TensorSpec",
    "VersionEntry",
    "check_model_name",
    "is_model_name",
    "next_version",
    "numpy_dtype",
    "parse_ascii_int",
    "parse_model_json",
    "parse_version",
    "plan_entry",
    "read_entry",
    "remove_stale_staging",
    "scan_model",
    "scan_repository",
    "v2_datatype",
    "write_entry",
]

MODEL_FORMAT = "normserve.model/1"
PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
MAX_DIGITS = 18  # the longest decimal that always fits an int64, and that int() parses quickly

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RepositoryError(UserError):
    """A repository entry that cannot be written or served; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Datatypes


@dataclass(frozen=True)
class DataType:
    """One tensor element type under each of the names the sides use."""

    v2: str  # Open Inference Protocol name: "FP32"
    numpy: np.dtype
    onnx: str  # ONNX Runtime's type string for graph inputs and outputs: "tensor(float)"
    onnx_code: int  # onnx.TensorProto data type: FLOAT = 1
    triton: str  # Triton model configuration: "TYPE_FP32"


def _dt(v2: str, numpy: type, onnx: str, code: int) -> DataType:
    return DataType(v2, np.dtype(numpy), f"tensor({onnx})", code, f"TYPE_{v2}")


DATATYPES: dict[str, DataType] = {
    d.v2: d
    for d in (
        _dt("BOOL", np.bool_, "bool", 9),
        _dt("UINT8", np.uint8, "uint8", 2),
        _dt("UINT16", np.uint16, "uint16", 4),
        _dt("UINT32", np.uint32, "uint32", 12),
        _dt("UINT64", np.uint64, "uint64", 13),
        _dt("INT8", np.int8, "int8", 3),
        _dt("INT16", np.int16, "int16", 5),
        _dt("INT32", np.int32, "int32", 6),
        _dt("INT64", np.int64, "int64", 7),
        _dt("FP16", np.float16, "float16", 10),
        _dt("FP32", np.float32, "float", 1),
        _dt("FP64", np.float64, "double", 11),
    )
}
_BY_NUMPY = {d.numpy: d for d in DATATYPES.values()}
_BY_ONNX = {d.onnx: d for d in DATATYPES.values()}
_BY_ONNX_CODE = {d.onnx_code: d for d in DATATYPES.values()}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype name; ``KeyError`` when unsupported."""
    return DATATYPES[datatype].numpy


def v2_datatype(
    *, numpy: np.dtype | str | None = None, onnx: str | None = None, onnx_code: int | None = None
) -> str | None:
    """The V2 name for a numpy dtype, an ORT type string or an ONNX type code; None if none."""
    if numpy is not None:
        found = _BY_NUMPY.get(np.dtype(numpy))
    elif onnx is not None:
        found = _BY_ONNX.get(onnx)
    else:
        found = _BY_ONNX_CODE.get(onnx_code)  # type: ignore[arg-type]
    return found.v2 if found is not None else None


# ---------------------------------------------------------------------------------------------
# Names and versions


def is_model_name(name: str) -> bool:
    """1-64 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit, no ``..``: safe as a
    directory and as a URL path segment."""
    return _NAME.fullmatch(name) is not None and ".." not in name


def check_model_name(name: str) -> str:
    """``name`` when it is a valid model name, else ``RepositoryError`` saying the rule."""
    if not is_model_name(name):
        raise RepositoryError(
            f"model name {name!r} is invalid: expected 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit, without '..'"
        )
    return name


def parse_ascii_int(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative integer written in ASCII decimal digits, else None.

    ``str.isdigit`` alone lets through digits that ``int`` refuses (superscripts) or reads as
    others (Arabic-Indic), and ``int`` refuses strings over 4300 digits: length comes first.
    """
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def parse_version(text: str) -> int | None:
    """A version directory or URL segment: a positive integer of at most 18 ASCII digits."""
    value = parse_ascii_int(text)
    return value if value is not None and value >= 1 else None


# ---------------------------------------------------------------------------------------------
# model.json as typed objects


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor; ``shape`` has -1 for the batch axis (first) and any other dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def tensor_to_json(name: str, array: np.ndarray) -> dict[str, Any]:
    """A V2 JSON tensor (name, datatype, shape, flat data) for a numpy array."""
    datatype = v2_datatype(numpy=array.dtype)
    if datatype is None:
        raise RepositoryError(f"tensor {name!r}: dtype {array.dtype} has no V2 datatype")
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


@dataclass(frozen=True)
class GoldenProbe:
    """Inputs recorded at export and the outputs ONNX Runtime gave for them then.

    The server replays them on every new version before serving it, and ``normserve verify``
    replays them too: a graph that loads but computes something else is refused.
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    rtol: float
    atol: float

    def mismatch(self, name: str, got: np.ndarray) -> str | None:
        """Why ``got`` is not the recorded output ``name``, or None when it matches."""
        expected = self.outputs[name]
        if got.shape != expected.shape:
            return f"has shape {list(got.shape)}, recorded {list(expected.shape)}"
        got64, want64 = got.astype(np.float64), expected.astype(np.float64)
        if np.allclose(got64, want64, rtol=self.rtol, atol=self.atol):
            return None
        worst = float(np.max(np.abs(got64 - want64))) if got.size else 0.0
        return f"differs (max abs diff {worst:.3g} > rtol {self.rtol:g}, atol {self.atol:g})"

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [tensor_to_json(n, a) for n, a in self.inputs.items()],
            "outputs": [tensor_to_json(n, a) for n, a in self.outputs.items()],
            "rtol": self.rtol,
            "atol": self.atol,
        }


@dataclass(frozen=True)
class BatchingOverrides:
    """``model.json``'s optional ``dynamic_batching`` object; None keeps the server setting."""

    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    queue_timeout_ms: float | None = None

    def to_json(self) -> dict[str, Any] | None:
        values = {k: v for k, v in self.__dict__.items() if v is not None}
        return values or None


@dataclass(frozen=True)
class ModelConfig:
    """One ``model.json``. ``export`` is the export report (source checkpoint, arch, opset,
    folds, parity figures, tools); the server shows parts of it and never acts on it."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    platform: str = PLATFORM
    labels: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    onnx_sha256: str = ""
    export: dict[str, Any] = field(default_factory=dict)
    golden_probe: GoldenProbe | None = None
    batching: BatchingOverrides = field(default_factory=BatchingOverrides)

    def input_spec(self, name: str) -> TensorSpec | None:
        return self._specs_by_name[0].get(name)

    def output_spec(self, name: str) -> TensorSpec | None:
        return self._specs_by_name[1].get(name)

    @cached_property
    def _specs_by_name(self) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        """Inputs and outputs by name (looked up per tensor of every request)."""
        return {s.name: s for s in self.inputs}, {s.name: s for s in self.outputs}

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` document (the shape ``parse_model_json`` reads back)."""
        document: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "name": self.name,
            "version": self.version,
            "platform": self.platform,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "max_batch_size": self.max_batch_size,
            "labels": self.labels,
            "preprocess": self.preprocess,
            "onnx_sha256": self.onnx_sha256,
            "golden_probe": self.golden_probe.to_json() if self.golden_probe else None,
            "export": self.export,
        }
        batching = self.batching.to_json()
        if batching is not None:
            document["dynamic_batching"] = batching
        return document


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
        if datatype not in DATATYPES:
            raise RepositoryError(f"{where} {name!r}: unsupported datatype {datatype!r}")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in shape
            )
            or shape[0] != -1
        ):
            raise RepositoryError(
                f"{where} {name!r}: shape must be a list of positive ints with -1 first (batch), "
                f"got {shape!r}"
            )
        specs.append(TensorSpec(name=name, datatype=datatype, shape=tuple(shape)))
    if len({s.name for s in specs}) != len(specs):
        raise RepositoryError(f"{where}: tensor names must be unique")
    return tuple(specs)


def _probe_tensors(raw: object, where: str) -> dict[str, np.ndarray]:
    if not isinstance(raw, list) or not raw:
        raise RepositoryError(f"{where} must be a non-empty list of V2 tensors")
    tensors: dict[str, np.ndarray] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise RepositoryError(f"{where} entries must be objects")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or datatype not in DATATYPES:
            raise RepositoryError(f"{where}: each tensor needs a name and a V2 datatype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise RepositoryError(f"{where} {name!r}: shape must be non-negative integers")
        try:
            array = np.asarray(item.get("data"), dtype=numpy_dtype(datatype))
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


def parse_model_json(raw: object, where: str) -> ModelConfig:
    """A ``ModelConfig`` from a parsed ``model.json``; ``RepositoryError`` naming the field."""
    if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
        raise RepositoryError(f"{where}: expected format {MODEL_FORMAT!r}")
    name, version = raw.get("name"), raw.get("version")
    if not isinstance(name, str) or not is_model_name(name):
        raise RepositoryError(f"{where}: 'name' must be a valid model name, got {name!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RepositoryError(f"{where}: 'version' must be a positive integer, got {version!r}")
    max_batch = raw.get("max_batch_size")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise RepositoryError(f"{where}: max_batch_size must be a positive integer")
    labels, preprocess, export = raw.get("labels"), raw.get("preprocess"), raw.get("export")
    return ModelConfig(
        name=name,
        version=version,
        platform=str(raw.get("platform", PLATFORM)),
        inputs=_tensor_specs(raw.get("inputs"), f"{where}: inputs"),
        outputs=_tensor_specs(raw.get("outputs"), f"{where}: outputs"),
        max_batch_size=max_batch,
        labels=labels if isinstance(labels, list) else None,
        preprocess=preprocess if isinstance(preprocess, dict) else None,
        onnx_sha256=str(raw.get("onnx_sha256", "")),
        export=export if isinstance(export, dict) else {},
        golden_probe=_golden_probe(raw.get("golden_probe"), f"{where}: golden_probe"),
        batching=_batching(raw.get("dynamic_batching"), f"{where}: dynamic_batching"),
    )


# ---------------------------------------------------------------------------------------------
# Entries on disk


@dataclass(frozen=True)
class VersionEntry:
    """One version directory: ``<repository>/<name>/<version>``."""

    name: str
    version: int
    path: Path

    @classmethod
    def at(cls, path: Path) -> VersionEntry:
        """The entry a ``<name>/<version>`` directory path names (checked, not read)."""
        version = parse_version(path.name)
        if version is None or not is_model_name(path.parent.name):
            raise RepositoryError(
                f"{path} is not a repository entry: expected <repository>/<name>/<version>/ "
                "with a positive integer version"
            )
        return cls(path.parent.name, version, path)

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def json_path(self) -> Path:
        return self.path / METADATA_FILE

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


def read_entry(entry: VersionEntry) -> ModelConfig:
    """Parse and check ``model.json``, and that ``model.onnx`` hashes to its ``onnx_sha256``."""
    try:
        raw = json.loads(entry.json_path.read_text())
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{entry.json_path}: cannot read JSON: {exc}") from exc
    config = parse_model_json(raw, str(entry.json_path))
    if config.name != entry.name or config.version != entry.version:
        raise RepositoryError(
            f"{entry.json_path}: records {config.name!r} version {config.version!r}, "
            f"but lies in {entry.name}/{entry.version}"
        )
    try:
        actual_sha = hashlib.sha256(entry.onnx_path.read_bytes()).hexdigest()
    except OSError as exc:
        raise RepositoryError(f"{entry.onnx_path}: cannot read: {exc.strerror or exc}") from exc
    if config.onnx_sha256 != actual_sha:
        raise RepositoryError(
            f"{entry.onnx_path}: sha256 {actual_sha[:12]}… does not match model.json's "
            f"onnx_sha256 {config.onnx_sha256[:12]}…"
        )
    return config


def _listing(directory: Path) -> list[Path]:
    """The sorted entries of ``directory``; one that vanished or turned into a file while being
    served is a ``RepositoryError`` like any other unreadable entry, not an ``OSError``."""
    try:
        return sorted(directory.iterdir())
    except OSError as exc:
        raise RepositoryError(f"{directory}: cannot list: {exc.strerror or exc}") from exc


def scan_model(model_dir: Path) -> list[VersionEntry]:
    """The numeric version directories of one model, oldest first (hidden names skipped)."""
    if not is_model_name(model_dir.name):
        raise RepositoryError(f"{model_dir}: not a valid model name")
    entries = []
    for version_dir in _listing(model_dir):
        if version_dir.name.startswith(".") or not version_dir.is_dir():
            continue
        version = parse_version(version_dir.name)
        if version is None:
            raise RepositoryError(f"{version_dir}: versions must be positive integers")
        entries.append(VersionEntry(model_dir.name, version, version_dir))
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


def next_version(model_dir: Path) -> int:
    """One more than the highest version present, or 1."""
    if not model_dir.is_dir():
        return 1
    versions = [parse_version(p.name) for p in model_dir.iterdir() if p.is_dir()]
    return max((v for v in versions if v is not None), default=0) + 1


# Targets that plan_entry chose itself (no version asked for): write_entry may move such an
# entry to the next free version when another export takes this one first.
_CHOSEN: set[Path] = set()
_CHOSEN_LOCK = threading.Lock()


def plan_entry(repository: Path, name: str, version: int | None, force: bool) -> tuple[Path, int]:
    """Resolve the target directory before any work is done, refusing what cannot be written.

    With no ``version``, the next free one is chosen now and claimed only when the entry is
    written (``write_entry``): an export that finds it taken then takes the next, so several
    exports of one name at once each get their own version. Staging directories left by
    killed exports are removed first (``remove_stale_staging``)."""
    check_model_name(name)
    model_dir = repository / name
    if repository.is_dir():
        remove_stale_staging(repository)
    chosen = version is None
    if version is None:
        version = next_version(model_dir)
    if version < 1 or len(str(version)) > MAX_DIGITS:
        raise RepositoryError(
            f"version must be a positive integer of at most 18 digits, got {version}"
        )
    target = model_dir / str(version)
    if target.exists() and not force:
        raise RepositoryError(f"{target} already exists; pass --force to replace it")
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository {repository} exists and is not a directory")
    _check_writable(model_dir)
    if chosen:
        with _CHOSEN_LOCK:
            _CHOSEN.add(target)
    return target, version


# -- staging directories left behind ------------------------------------------------------------

STALE_AFTER_S = 600.0
"""A staging directory is stale once this old and its writer process is gone."""
_STAGING = re.compile(r"^\.(?:\d+\.(?:tmp|old)|normserve-probe)-(?:(\d+)-([0-9a-f]{8})-)?")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _staging_prefix(kind: str, version: str) -> str:
    """``.<version>.<kind>-<pid>-<host>-``: whose it is, for ``remove_stale_staging``."""
    return f".{version}.{kind}-{os.getpid()}-{_host_tag()}-"


def _writer_gone(pid: str | None, host: str | None, age_s: float) -> bool:
    if age_s < STALE_AFTER_S:
        return False
    if pid is None or host != _host_tag():
        return age_s > 24 * 3600  # no owner to ask (an older name, another machine)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, someone else's
    return False


def remove_stale_staging(repository: Path) -> list[Path]:
    """Remove the hidden staging directories of exports that died mid-write (older than
    ``STALE_AFTER_S``, their process gone) and return them. An entry a killed ``--force``
    replacement had moved aside (``.<version>.old-*``) is put back when nothing took its
    place. Best effort: what cannot be listed or removed (a read-only repository) stays."""
    removed: list[Path] = []
    try:
        model_dirs = [p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return removed
    now = time.time()
    for directory in [repository, *model_dirs]:
        try:
            candidates = [p for p in directory.iterdir() if _STAGING.match(p.name)]
        except OSError:
            continue
        for path in candidates:
            match = _STAGING.match(path.name)
            assert match is not None
            try:
                age = now - path.lstat().st_mtime
            except OSError:
                continue
            if not path.is_dir() or not _writer_gone(match[1], match[2], age):
                continue
            version = path.name[1:].split(".", 1)[0]
            target = directory / version
            try:
                if ".old-" in path.name and not target.exists():
                    os.rename(path, target)  # the replacement never arrived: put it back
                else:
                    shutil.rmtree(path)
                removed.append(path)
            except OSError:
                continue
    return removed


def _check_writable(directory: Path) -> None:
    """Fail before minutes of work, not after, when ``directory`` cannot be created or written.

    Probes the nearest existing ancestor with a hidden temporary directory (the server skips
    hidden names), removed at once; nothing is left behind either way.
    """
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise RepositoryError(f"cannot write to {directory}: {existing} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".normserve-probe-", dir=existing)
    except OSError as exc:
        raise RepositoryError(f"cannot write to {directory}: {exc.strerror or exc}") from exc
    os.rmdir(probe)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_entry(target: Path, onnx_bytes: bytes, config: ModelConfig, force: bool) -> ModelConfig:
    """Write both files into a hidden staging sibling of ``target`` and rename it into place:
    a reader (the server's scan skips hidden names) sees no entry or a whole one.

    The rename claims the version: when ``target`` was chosen by ``plan_entry`` (no version
    asked for) and another export took it meanwhile, the entry goes to the next free version
    instead (its ``model.json`` says so). Returns the config written, with that version."""
    if config.onnx_sha256 != hashlib.sha256(onnx_bytes).hexdigest():
        raise RepositoryError(f"{target}: the config's onnx_sha256 does not match the ONNX bytes")
    with _CHOSEN_LOCK:
        movable = target in _CHOSEN
        _CHOSEN.discard(target)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = _staging_prefix("tmp", target.name)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    except OSError as exc:
        _remove_empty(created)
        raise RepositoryError(f"cannot write to {target.parent}: {exc.strerror or exc}") from exc
    retired: Path | None = None
    try:
        _write_file(staging / MODEL_FILE, onnx_bytes)
        _write_file(staging / METADATA_FILE, _config_text(config))
        os.chmod(staging, 0o755)
        if target.exists() and force:
            retired = target.parent / (_staging_prefix("old", target.name) + os.urandom(4).hex())
            os.replace(target, retired)
            os.replace(staging, target)
        else:
            target, config = _claim(staging, target, config, movable)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and not target.exists():
            os.replace(retired, target)
        _remove_empty(created)
        raise RepositoryError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    return config


def _config_text(config: ModelConfig) -> bytes:
    return (json.dumps(config.to_json(), indent=2, sort_keys=False) + "\n").encode()


_TAKEN = {errno.EEXIST, errno.ENOTEMPTY}
_CLAIM_ATTEMPTS = 1000


def _claim(
    staging: Path, target: Path, config: ModelConfig, movable: bool
) -> tuple[Path, ModelConfig]:
    """Rename ``staging`` to ``target`` only if no entry is there (a rename onto a directory
    that holds files fails): atomically, against any number of exports at once. A ``movable``
    entry tries the next free version instead of failing."""
    for _ in range(_CLAIM_ATTEMPTS):
        if not target.exists():
            try:
                os.rename(staging, target)
                return target, config
            except OSError as exc:
                if exc.errno not in _TAKEN:
                    raise
        if not movable:
            raise RepositoryError(f"{target} already exists; pass --force to replace it")
        version = next_version(target.parent)
        target = target.parent / str(version)
        config = replace(config, version=version)
        _write_file(staging / METADATA_FILE, _config_text(config))
    raise RepositoryError(f"{target.parent}: no free version after {_CLAIM_ATTEMPTS} attempts")


def _remove_empty(directories: list[Path]) -> None:
    """Undo the directories a failed write created (innermost first), if still empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return
