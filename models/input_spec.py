"""A model input as checkpoints and the command line describe it: name, per-sample shape,
dtype and the axes (besides the batch) whose size may vary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normserve.model_repository import DATATYPES
from normserve.models.checkpoint_files import CheckpointError

__all__ = ["DTYPE_NAMES", "InputSpec", "parse_dtype"]

# Input dtypes by their numpy names (float32, float16, int64, bool, ...): every V2 datatype.
DTYPE_NAMES = tuple(d.numpy.name for d in DATATYPES.values())


def parse_dtype(text: str, where: str = "dtype") -> str:
    """A dtype's numpy name from a numpy name (``int64``) or a V2 name (``INT64``)."""
    if text in DTYPE_NAMES:
        return text
    if text.upper() in DATATYPES:
        return DATATYPES[text.upper()].numpy.name
    raise CheckpointError(
        f"{where} {text!r} is not supported: expected one of {', '.join(DTYPE_NAMES)}"
    )


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, per-sample shape (no batch axis), dtype (a numpy name) and the
    axes of the batched tensor besides the batch (axis 0) whose size may vary."""

    name: str
    shape: list[int]
    dtype: str = "float32"
    dynamic_axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for axis in self.dynamic_axes:
            if not 1 <= axis <= len(self.shape):
                raise CheckpointError(
                    f"input {self.name!r}: dynamic axis {axis} is not an axis of a sample of "
                    f"shape {list(self.shape)} (expected 1..{len(self.shape)}; 0 is the batch)"
                )

    def to_dict(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.dynamic_axes:
            spec["dynamic_axes"] = list(self.dynamic_axes)
        return spec

    @classmethod
    def parse(cls, raw: object, where: str = "checkpoint input") -> InputSpec:
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where} must be a dict with name, shape and dtype")
        name, shape, dtype = raw.get("name"), raw.get("shape"), raw.get("dtype", "float32")
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{where} 'name' must be a non-empty string")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise CheckpointError(f"{where} 'shape' must be positive ints, got {shape!r}")
        if not isinstance(dtype, str):
            raise CheckpointError(f"{where} 'dtype' must be one of {', '.join(DTYPE_NAMES)}")
        axes = raw.get("dynamic_axes", [])
        if not isinstance(axes, list) or not all(isinstance(a, int) for a in axes):
            raise CheckpointError(f"{where} 'dynamic_axes' must be a list of axis numbers")
        return cls(
            name=name,
            shape=[int(d) for d in shape],
            dtype=parse_dtype(dtype, f"{where} 'dtype'"),
            dynamic_axes=tuple(sorted(set(axes))),
        )

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)
