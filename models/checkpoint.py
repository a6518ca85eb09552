"""Checkpoint files (DESIGN.md §2): the normserve format, and the files users really have.

Every file is read with ``torch.load(..., weights_only=True)``: plain data, never code
(models/checkpoint_files.py). A normserve checkpoint (``format: normserve.checkpoint/1``)
records its architecture, inputs, outputs and labels. Any other file (a bare ``state_dict``; a
training dict such as ``{'epoch': 3, 'model_state_dict': ..., 'optimizer_state_dict': ...}``;
a Lightning checkpoint; a DataParallel or ``torch.compile`` state dict) needs the architecture
and the inputs from the user, and is offered as its possible readings as a state dict.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from normserve.models.checkpoint_files import (
    CheckpointError,
    StateDictReading,
    is_state_dict,
    read_file,
    state_dict_readings,
)
from normserve.models.input_spec import DTYPE_NAMES, InputSpec, parse_dtype

__all__ = [
    "CHECKPOINT_FORMAT",
    "DTYPE_NAMES",
    "Checkpoint",
    "CheckpointError",
    "InputSpec",
    "load_checkpoint",
    "parse_dtype",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "normserve.checkpoint/1"


@dataclass
class Checkpoint:
    """Everything needed to rebuild a trained model without unpickling code.

    ``readings`` holds one state dict for a normserve checkpoint, and every candidate reading
    for any other file (export/rebuild.py keeps the one that loads strictly).
    """

    arch: str
    inputs: list[InputSpec]
    readings: list[StateDictReading]
    arch_config: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    output_names: list[str] | None = None
    source: str = CHECKPOINT_FORMAT  # what the file was: the format, or "state dict", ...

    @classmethod
    def from_state_dict(
        cls, *, arch: str, state_dict: dict[str, torch.Tensor], inputs: list[InputSpec], **kw: Any
    ) -> Checkpoint:
        """A normserve checkpoint of a model in memory (training, benchmarks)."""
        reading = StateDictReading("state_dict", "", state_dict, len(state_dict))
        return cls(arch=arch, inputs=inputs, readings=[reading], **kw)

    @property
    def input(self) -> InputSpec:
        """The first input (the only one of most models)."""
        return self.inputs[0]

    @property
    def output_name(self) -> str:
        """The first output's name (the only output of most models)."""
        return self.output_names[0] if self.output_names else "output"

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict, when the file has a single reading."""
        if len(self.readings) != 1:
            raise CheckpointError(
                f"the checkpoint has {len(self.readings)} possible state dicts; "
                "export/rebuild.py picks the one that loads"
            )
        return self.readings[0].state_dict

    def with_reading(self, reading: StateDictReading) -> Checkpoint:
        return replace(self, readings=[reading])

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "arch_config": self.arch_config,
            "state_dict": self.state_dict,
            "labels": self.labels,
            "preprocess": self.preprocess,
            "metrics": self.metrics,
        }
        if len(self.inputs) == 1:
            document["input"] = self.inputs[0].to_dict()
        else:
            document["inputs"] = [spec.to_dict() for spec in self.inputs]
        names = self.output_names or []
        if len(names) == 1:
            document["output"] = {"name": names[0]}
        elif names:
            document["outputs"] = [{"name": n} for n in names]
        return document


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


def _names(raw: dict, single: str, several: str, path: Path) -> list[dict] | None:
    if raw.get(several) is not None:
        value = raw[several]
        if not isinstance(value, list) or not value:
            raise CheckpointError(f"{path}: {several!r} must be a non-empty list")
        return value
    if raw.get(single) is not None:
        return [raw[single]]
    return None


def _output_names(raw: dict, path: Path) -> list[str] | None:
    outputs = _names(raw, "output", "outputs", path)
    if outputs is None:
        return None
    names = [o.get("name") if isinstance(o, dict) else None for o in outputs]
    if not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{path}: every output needs a non-empty 'name'")
    return names  # type: ignore[return-value]


def _foreign(
    path: Path,
    raw: object,
    *,
    arch: str | None,
    arch_config: dict[str, Any] | None,
    inputs: list[InputSpec] | None,
    state_dict_key: str | None,
    strip_prefix: str | None,
) -> Checkpoint:
    """A file that is not a normserve checkpoint: the user names the architecture and inputs."""
    if is_state_dict(raw):
        kind = "a bare state dict"
    elif isinstance(raw, dict) and any(is_state_dict(v) for v in raw.values()):
        kind = "not a normserve checkpoint but a training checkpoint " + (
            f"(keys: {', '.join(repr(str(k)) for k in list(raw)[:8])})"
        )
    else:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path} is not a normserve checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r}), and holds no state dict (a dict of parameter names to tensors)"
        )
    missing = []
    if arch is None:
        missing.append("--arch package.module:factory")
    if not inputs:
        missing.append("--input-shape C,H,W (or --input NAME:SHAPE:DTYPE, or --sample-inputs)")
    if missing:
        raise CheckpointError(f"{path} is {kind}: pass {' and '.join(missing)} to export it")
    assert arch is not None
    assert inputs
    return Checkpoint(
        arch=arch,
        inputs=list(inputs),
        readings=state_dict_readings(raw, key=state_dict_key, prefix=strip_prefix, where=str(path)),
        arch_config=dict(arch_config or {}),
        source="state dict" if is_state_dict(raw) else "training checkpoint",
    )


def load_checkpoint(
    path: Path,
    *,
    arch: str | None = None,
    arch_config: dict[str, Any] | None = None,
    inputs: list[InputSpec] | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
) -> Checkpoint:
    """Read a normserve checkpoint, or any file holding a state dict given ``arch``/``inputs``.

    ``arch``, ``arch_config`` and ``inputs`` given with a normserve checkpoint override the
    recorded ones. A recorded ``package.module:factory`` arch is refused unless ``arch`` is
    given: the file is data and never chooses code to import and call.
    """
    if arch_config is not None and not isinstance(arch_config, dict):
        raise CheckpointError("arch_config must be a dict of keyword arguments")
    raw = read_file(path)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        return _foreign(
            path,
            raw,
            arch=arch,
            arch_config=arch_config,
            inputs=inputs,
            state_dict_key=state_dict_key,
            strip_prefix=strip_prefix,
        )
    if not is_state_dict(raw.get("state_dict")):
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
    recorded_inputs = _names(raw, "input", "inputs", path)
    if recorded_inputs is None:
        raise CheckpointError(f"{path}: 'input' must be a dict with name, shape and dtype")
    specs = [InputSpec.parse(spec) for spec in recorded_inputs]
    labels = raw.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(s, str) for s in labels)
    ):
        raise CheckpointError(f"{path}: 'labels' must be a list of strings")
    return Checkpoint(
        arch=arch or recorded_arch,
        inputs=list(inputs) if inputs else specs,
        readings=state_dict_readings(
            raw, key=state_dict_key or "state_dict", prefix=strip_prefix, where=str(path)
        ),
        arch_config=dict(arch_config) if arch_config is not None else config,
        labels=labels,
        preprocess=raw.get("preprocess"),
        metrics=raw.get("metrics"),
        output_names=_output_names(raw, path),
    )
