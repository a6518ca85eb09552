"""Rebuilding the eager model from a checkpoint, and the inputs its proof runs on.

Shared by ``normserve export`` (export/from_checkpoint.py) and ``normserve verify``
(export/verify.py): both must rebuild the same model the same way and prove it on the same
inputs, so neither borrows the other's private helpers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from normserve.errors import first_line
from normserve.export.errors import ExportError
from normserve.models.checkpoint import Checkpoint
from normserve.models.datasets import load_dataset
from normserve.models.registry import ArchitectureError, build_model, get_architecture

__all__ = ["build_eval_model", "parity_inputs", "sha256_file"]

_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (how model.json names its source checkpoint)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_eval_model(checkpoint: Checkpoint) -> nn.Module:
    """Rebuild the architecture, load the state dict strictly, return it in eval mode."""
    model = build_model(checkpoint.arch, checkpoint.arch_config)
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines() or [first_line(exc)]
        detail = " ".join(line.strip() for line in lines[:3])
        raise ExportError(f"state_dict does not fit arch {checkpoint.arch!r}: {detail}") from exc
    return model.eval()


def parity_inputs(checkpoint: Checkpoint, count: int = 64) -> tuple[torch.Tensor, str]:
    """Validation inputs from the architecture's dataset when known, else seeded random ones."""
    shape = list(checkpoint.input.shape)
    dtype = _TORCH_DTYPES[checkpoint.input.dtype]
    try:
        dataset_name = (
            get_architecture(checkpoint.arch).dataset if ":" not in checkpoint.arch else None
        )
    except ArchitectureError:
        dataset_name = None
    if dataset_name is not None:
        metrics = checkpoint.metrics or {}
        seed = int(metrics.get("seed", 0))
        val_fraction = float(metrics.get("val_fraction", 0.2))
        data = load_dataset(dataset_name, seed=seed, val_fraction=val_fraction)
        if list(data.input_shape) == shape:
            return data.x_val[:count].to(dtype), f"validation split of {dataset_name}"
    generator = torch.Generator().manual_seed(0)
    return torch.randn([count, *shape], generator=generator).to(dtype), "random normal"
