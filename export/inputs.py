"""The inputs the proof and the golden probe run on, best first:

1. the user's own samples (``--sample-inputs FILE.npz``, or the examples handed to the Python
   API): real data, the only inputs that exercise the model where it is used;
2. the validation split of a registry architecture's dataset;
3. seeded random inputs (normal for floats, 0/1 for integers and bool), said loudly: a proof
   on inputs unlike real data can miss what real data would show.

A ``.npz`` file is read with ``allow_pickle=False`` (data, never code). Its arrays are matched
to the inputs by name, or by position when saved unnamed (``np.savez(f, x, y)``); each holds
samples on axis 0.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from normserve.errors import first_line
from normserve.export.errors import ExportError
from normserve.models.checkpoint import DTYPE_NAMES, Checkpoint, InputSpec
from normserve.models.datasets import load_dataset
from normserve.models.registry import ArchitectureError, get_architecture

__all__ = [
    "RANDOM_WARNING",
    "ProofInputs",
    "at_other_sizes",
    "checkpoint_inputs",
    "random_inputs",
    "read_sample_inputs",
    "specs_of",
]

RANDOM_WARNING = (
    "the proof ran on random inputs, not on data like yours: pass --sample-inputs FILE.npz "
    "(real inputs, one array per input, samples on axis 0) to prove the export where it is used"
)
COUNT = 64


@dataclass(frozen=True)
class ProofInputs:
    """Inputs with samples on axis 0 (one tensor per model input), and what they are."""

    tensors: tuple[torch.Tensor, ...]
    kind: str
    random: bool = False


def specs_of(tensors: tuple[torch.Tensor, ...], names: list[str]) -> list[InputSpec]:
    """Input specs (per-sample shape and dtype) read off example tensors."""
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in DTYPE_NAMES:
            raise ExportError(
                f"input {name!r} is {tensor.dtype}: expected one of {', '.join(DTYPE_NAMES)}"
            )
        specs.append(InputSpec(name=name, shape=list(tensor.shape[1:]), dtype=dtype))
    return specs


def random_inputs(specs: list[InputSpec], count: int = COUNT, seed: int = 0) -> ProofInputs:
    """Seeded random inputs: normal for floats, 0 or 1 for integers (valid token ids for any
    vocabulary) and bool."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        shape = [count, *spec.shape]
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))
        else:
            tensors.append(torch.randint(0, 2, shape, generator=generator).to(dtype))
    return ProofInputs(tuple(tensors), "random (no sample inputs given)", random=True)


def _dataset_inputs(checkpoint: Checkpoint, count: int) -> ProofInputs | None:
    if ":" in checkpoint.arch or len(checkpoint.inputs) != 1:
        return None
    try:
        dataset_name = get_architecture(checkpoint.arch).dataset
    except ArchitectureError:
        return None
    metrics = checkpoint.metrics or {}
    seed = int(metrics.get("seed", 0))
    val_fraction = float(metrics.get("val_fraction", 0.2))
    data = load_dataset(dataset_name, seed=seed, val_fraction=val_fraction)
    if list(data.input_shape) != list(checkpoint.input.shape):
        return None
    tensor = data.x_val[:count].to(getattr(torch, checkpoint.input.dtype))
    return ProofInputs((tensor,), f"validation split of {dataset_name}")


def checkpoint_inputs(checkpoint: Checkpoint, count: int = COUNT) -> ProofInputs:
    """Validation inputs from the architecture's dataset when known, else random ones."""
    return _dataset_inputs(checkpoint, count) or random_inputs(checkpoint.inputs, count)


def read_sample_inputs(
    path: Path, specs: list[InputSpec] | None
) -> tuple[ProofInputs, list[InputSpec]]:
    """The arrays of ``path`` as proof inputs, and the input specs they imply.

    With ``specs`` (from the checkpoint or the command line) every input must be there with
    its per-sample shape (dynamic axes may differ) and a dtype of the same kind (floats are
    cast to the input's float dtype). Without, the arrays define the inputs.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ExportError(
            f"--sample-inputs {path}: not a readable .npz of arrays: {first_line(exc)}"
        ) from exc
    if not arrays:
        raise ExportError(f"--sample-inputs {path} holds no arrays")
    unnamed = all(name == f"arr_{i}" for i, name in enumerate(arrays))
    if specs is None:
        names = (
            (["input"] if len(arrays) == 1 else [f"input_{i}" for i in range(len(arrays))])
            if unnamed
            else list(arrays)
        )
        tensors = tuple(
            _tensor(path, name, a) for name, a in zip(names, arrays.values(), strict=True)
        )
        specs = specs_of(tensors, names)
    else:
        if unnamed and len(arrays) == len(specs):
            by_spec = dict(zip((s.name for s in specs), arrays.values(), strict=True))
        else:
            missing = [s.name for s in specs if s.name not in arrays]
            if missing:
                raise ExportError(
                    f"--sample-inputs {path} has arrays {list(arrays)}, not the inputs "
                    f"{missing}: name each array after its input"
                )
            by_spec = {s.name: arrays[s.name] for s in specs}
        tensors = tuple(_matching(path, spec, by_spec[spec.name]) for spec in specs)
    counts = {len(t) for t in tensors}
    if len(counts) != 1:
        raise ExportError(
            f"--sample-inputs {path}: every array needs the same number of samples on axis 0, "
            f"got {[len(t) for t in tensors]}"
        )
    return ProofInputs(tensors, f"sample inputs {path.name} ({counts.pop()} samples)"), specs


def _tensor(path: Path, name: str, array: np.ndarray) -> torch.Tensor:
    if array.ndim == 0 or len(array) == 0:
        raise ExportError(f"--sample-inputs {path}: {name!r} needs samples on axis 0")
    if array.dtype.name not in DTYPE_NAMES:
        raise ExportError(
            f"--sample-inputs {path}: {name!r} is {array.dtype}: expected one of "
            f"{', '.join(DTYPE_NAMES)}"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def _matching(path: Path, spec: InputSpec, array: np.ndarray) -> torch.Tensor:
    tensor = _tensor(path, spec.name, array)
    shape = list(array.shape[1:])
    fixed = [i for i in range(len(spec.shape)) if i + 1 not in spec.dynamic_axes]
    if len(shape) != len(spec.shape) or any(shape[i] != spec.shape[i] for i in fixed):
        raise ExportError(
            f"--sample-inputs {path}: {spec.name!r} has samples of shape {shape}, the input "
            f"takes {spec.shape}"
        )
    want = np.dtype(spec.dtype)
    if array.dtype == want:
        return tensor
    if np.issubdtype(array.dtype, np.floating) and np.issubdtype(want, np.floating):
        return tensor.to(getattr(torch, spec.dtype))
    raise ExportError(
        f"--sample-inputs {path}: {spec.name!r} is {array.dtype}, the input takes {spec.dtype}"
    )


def at_other_sizes(
    tensors: tuple[torch.Tensor, ...], specs: list[InputSpec]
) -> tuple[torch.Tensor, ...] | None:
    """The inputs with every dynamic axis twice as long (tiled, so token ids and divisibility
    by any stride stay valid); None when no input has a dynamic axis besides the batch."""
    if not any(spec.dynamic_axes for spec in specs):
        return None
    out = []
    for tensor, spec in zip(tensors, specs, strict=True):
        for axis in spec.dynamic_axes:
            tensor = torch.cat([tensor, tensor], dim=axis)
        out.append(tensor)
    return tuple(out)
