"""The checkpoint format (DESIGN.md §2): a plain dict readable with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from normserve.errors import UserError, first_line

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "InputSpec",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "normserve.checkpoint/1"
_DTYPES = {"float32", "float64", "float16"}


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe or not in the expected format."""


@dataclass(frozen=True)
class InputSpec:
    """The model input: its name, per-sample shape (no batch axis) and dtype."""

    name: str
    shape: list[int]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def parse(cls, raw: object) -> InputSpec:
        if not isinstance(raw, dict):
            raise CheckpointError("checkpoint 'input' must be a dict with name, shape and dtype")
        name, shape, dtype = raw.get("name"), raw.get("shape"), raw.get("dtype", "float32")
        if not isinstance(name, str) or not name:
            raise CheckpointError("checkpoint input 'name' must be a non-empty string")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and d > 0 for d in shape
        ):
            raise CheckpointError(f"checkpoint input 'shape' must be positive ints, got {shape!r}")
        if dtype not in _DTYPES:
            raise CheckpointError(f"checkpoint input 'dtype' must be one of {sorted(_DTYPES)}")
        return cls(name=name, shape=[int(d) for d in shape], dtype=dtype)


@dataclass
class Checkpoint:
    """Everything needed to rebuild a trained model without unpickling code."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    input: InputSpec
    arch_config: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    output_name: str = "logits"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "arch_config": self.arch_config,
            "state_dict": self.state_dict,
            "input": self.input.to_dict(),
            "output": {"name": self.output_name},
            "labels": self.labels,
            "preprocess": self.preprocess,
            "metrics": self.metrics,
        }


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write atomically: a temporary file in the same directory, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(checkpoint.to_dict(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unsafe_reason(exc: Exception) -> str:
    """torch's weights-only refusal, reduced to the offending global."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if match:
        return f"it references {match.group(1)}, which is code, not data"
    return first_line(exc, default="unsafe content")


def _read(path: Path) -> object:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since 1.6; anything else is corrupt or legacy.
        raise CheckpointError(f"checkpoint {path} is not a readable torch file (not a zip archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} is refused: loading it needs code to be unpickled "
            f"(normserve loads with weights_only=True): {_unsafe_reason(exc)}; save "
            "model.state_dict() or a normserve checkpoint instead of a pickled object"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable torch file: {first_line(exc)}"
        ) from exc


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_checkpoint(
    path: Path,
    *,
    arch: str | None = None,
    input_shape: list[int] | None = None,
    arch_config: dict[str, Any] | None = None,
) -> Checkpoint:
    """Read a normserve checkpoint, or a bare state dict given ``arch`` and ``input_shape``.

    ``arch``, ``input_shape`` and ``arch_config`` given with a full checkpoint override the
    recorded ones. A recorded ``package.module:factory`` arch is refused unless ``arch`` is
    given: the file is data and never chooses code to import and call.
    """
    if arch_config is not None and not isinstance(arch_config, dict):
        raise CheckpointError("arch_config must be a dict of keyword arguments")
    raw = _read(path)
    if _is_state_dict(raw):
        if arch is None or input_shape is None:
            raise CheckpointError(
                f"{path} is a bare state dict: pass --arch and --input-shape to export it"
            )
        return Checkpoint(
            arch=arch,
            arch_config=dict(arch_config or {}),
            state_dict=raw,  # type: ignore[arg-type]
            input=InputSpec(name="input", shape=list(input_shape)),
        )
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path} is not a normserve checkpoint: expected format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r}"
        )
    state = raw.get("state_dict")
    if not _is_state_dict(state):
        raise CheckpointError(f"{path}: 'state_dict' must map parameter names to tensors")
    recorded_arch = raw.get("arch")
    if not isinstance(recorded_arch, str) or not recorded_arch:
        raise CheckpointError(f"{path}: 'arch' must be a registry name or package.module:factory")
    if ":" in recorded_arch and arch is None:
        # An import path is code: importing it and calling it with the recorded arch_config
        # would let a checkpoint run any installed callable (``subprocess:run`` with
        # ``{"args": [...]}``), weights_only or not. Only the user names code to run.
        raise CheckpointError(
            f"{path} names the architecture {recorded_arch!r}, an import path: normserve does "
            f"not run code a checkpoint names; pass --arch {recorded_arch} if you trust it"
        )
    config = raw.get("arch_config") or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'arch_config' must be a dict of keyword arguments")
    spec = InputSpec.parse(raw.get("input"))
    if input_shape is not None:
        spec = InputSpec(name=spec.name, shape=list(input_shape), dtype=spec.dtype)
    labels = raw.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(s, str) for s in labels)
    ):
        raise CheckpointError(f"{path}: 'labels' must be a list of strings")
    output = raw.get("output") or {}
    return Checkpoint(
        arch=arch or recorded_arch,
        arch_config=dict(arch_config) if arch_config is not None else config,
        state_dict=state,  # type: ignore[arg-type]
        input=spec,
        labels=labels,
        preprocess=raw.get("preprocess"),
        metrics=raw.get("metrics"),
        output_name=str(output.get("name", "logits")) if isinstance(output, dict) else "logits",
    )
