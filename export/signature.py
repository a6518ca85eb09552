"""A model's tensor signature: its inputs as a tuple, its outputs as a flat named list.

``forward`` takes one tensor per input, positionally. It may return a tensor, a tuple or list
of tensors, or a dict of them (nested too); the outputs are flattened in the order the ONNX
exporter flattens them (sequences in order, dicts in insertion order), and named:

- by ``output_names`` when given (one per tensor);
- else a dict's keys (``"a.b"`` for nested ones), ``output_0``, ``output_1``, … for a
  sequence, and ``default`` for a single tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from normserve.export.errors import ExportError

__all__ = ["as_inputs", "check_names", "flatten_outputs", "output_names_for"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")


def as_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """One tensor or a sequence of them as a tuple, each with its batch on axis 0."""
    items = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise ExportError("example inputs must be a tensor or a sequence of tensors")
    if any(t.dim() == 0 for t in items):
        raise ExportError("every example input needs a batch axis (axis 0)")
    counts = {len(t) for t in items}
    if len(counts) != 1 or 0 in counts:
        raise ExportError(
            f"example inputs must share one non-zero batch size on axis 0, got "
            f"{[len(t) for t in items]}"
        )
    return items


def _walk(value: object, path: str, out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(value, torch.Tensor):
        out.append((path, value))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _walk(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _walk(item, f"{path}.{i}" if path else f"output_{i}", out)
    else:
        raise ExportError(
            f"the model returns {type(value).__name__}"
            f"{f' at {path!r}' if path else ''}: normserve exports tensors, or tuples, lists "
            "and dicts of tensors"
        )


def _named(value: object) -> list[tuple[str, torch.Tensor]]:
    out: list[tuple[str, torch.Tensor]] = []
    _walk(value, "", out)
    if not out:
        raise ExportError("the model returns no tensor")
    return out


def flatten_outputs(value: object) -> list[torch.Tensor]:
    """The output tensors of one forward call, in the exporter's order."""
    return [tensor for _, tensor in _named(value)]


def output_names_for(
    value: object, given: Sequence[str] | None = None, default: str = "output"
) -> list[str]:
    """The outputs' names: ``given``, else from the structure (see the module doc)."""
    named = _named(value)
    if given is not None:
        names = list(given)
        if len(names) != len(named):
            raise ExportError(
                f"{len(names)} output name(s) given ({', '.join(names)}) for a model with "
                f"{len(named)} output tensor(s)"
            )
    else:
        names = [default] if isinstance(value, torch.Tensor) else [path for path, _ in named]
    return check_names(names, "output")


def check_names(names: Sequence[str], kind: str) -> list[str]:
    """``names`` when each is a usable, unique tensor name, else one line saying the rule."""
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ExportError(
                f"{kind} name {name!r} is not usable: expected a letter or '_' then up to 127 "
                "of A-Z a-z 0-9 _ . : / -"
            )
    if len(set(names)) != len(names):
        raise ExportError(f"{kind} names must be unique, got {list(names)}")
    return list(names)
