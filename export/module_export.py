"""Export one in-memory ``nn.Module``: fold and freeze, export, audit, prove — nothing written.

The core of ``normserve export`` and of the Python API (export/entry.py). The user's module is
never touched: it is deep-copied first, and every step (eval mode, folding, tracing, the eager
references of the proof) works on copies, so its parameters, buffers (running statistics,
``num_batches_tracked``) and ``.training`` flags are exactly as they were. A model handed over
in training mode is exported as its eval-mode function (running statistics, no dropout), and
the export says so.

Inputs: one tensor per ``forward`` argument, samples on axis 0, in the dtype the model takes
(float32, float16, float64, int64, int32, bool, ...). Outputs: a tensor, or tuples, lists and
dicts of tensors (export/signature.py names them).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from torch import nn

from normserve.errors import first_line
from normserve.export.audit import audit_graph
from normserve.export.comparison import Batch, Tolerance
from normserve.export.errors import ExportError
from normserve.export.freeze import FreezeReport, freeze_normalization
from normserve.export.inputs import at_other_sizes, specs_of
from normserve.export.onnx_export import DEFAULT_OPSET, export_onnx, graph_shapes
from normserve.export.parity import (
    BATCH_SIZES,
    ParityReport,
    proof_batches,
    prove_parity,
    require_parity,
)
from normserve.export.signature import as_inputs, check_names, output_names_for
from normserve.model_repository import TensorSpec, v2_datatype
from normserve.models.checkpoint import InputSpec

__all__ = ["ModuleExport", "export_module", "export_sample"]

Step = Callable[[str], None]
TRAIN_MODE_NOTE = (
    "the model was handed over in training mode: its eval-mode function was exported (running "
    "statistics instead of batch statistics, dropout off); the model object was not changed"
)


@dataclass(frozen=True)
class ModuleExport:
    """A proven ONNX export held in memory."""

    onnx_bytes: bytes
    freeze: FreezeReport
    graph: dict[str, Any]
    parity: ParityReport
    inputs: tuple[TensorSpec, ...]  # as model.json declares them: -1 for every dynamic axis
    outputs: tuple[TensorSpec, ...]
    classifier: bool
    batches: list[Batch] = field(default_factory=list, repr=False)  # the proof's, for the probe
    notes: list[str] = field(default_factory=list)

    @property
    def output_shape(self) -> list[int]:
        """The first output's per-sample shape (-1 for dynamic axes)."""
        return list(self.outputs[0].shape[1:])

    def normalization(self) -> dict[str, Any]:
        """What happened to every normalization layer, and what the graphs still hold."""
        exported = self.graph["onnx_nodes"]
        optimized = self.graph["ort_optimized_nodes"]
        return {
            **self.freeze.to_dict(),
            "remaining_norm_ops": self.graph["remaining_norm_ops"],
            "ort_optimized_norm_ops": self.graph["ort_optimized_norm_ops"],
            "batch_normalization_nodes": {
                "exported": exported.get("BatchNormalization", 0),
                "ort_optimized": optimized.get("BatchNormalization", 0),
            },
        }


def export_sample(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The trace/export sample: 2 to 4 real inputs (a batch of 1 would specialize the graph)."""
    n = len(inputs[0])
    count = max(2, min(n, 4))
    index = torch.arange(count) % n
    return tuple(t[index].contiguous() for t in inputs)


def _in_training_mode(model: nn.Module) -> bool:
    return any(m.training for m in model.modules())


def default_input_names(model: nn.Module, count: int) -> list[str]:
    """``input`` for one input; else ``forward``'s parameter names when they are plain
    positional ones, else ``input_0``, ``input_1``, …"""
    if count == 1:
        return ["input"]
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    plain = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(plain) >= count and len(parameters) == len(plain):
        return plain[:count]
    return [f"input_{i}" for i in range(count)]


def _dynamic_by_index(
    dynamic_axes: Mapping[str, Sequence[int]] | None,
    names: list[str],
    tensors: tuple[torch.Tensor, ...],
) -> dict[int, tuple[int, ...]]:
    found: dict[int, tuple[int, ...]] = {}
    for name, axes in (dynamic_axes or {}).items():
        if name not in names:
            raise ExportError(
                f"dynamic axes for {name!r}: no such input (inputs: {', '.join(names)})"
            )
        index = names.index(name)
        rank = tensors[index].dim()
        bad = [a for a in axes if not 1 <= a < rank]
        if bad:
            raise ExportError(
                f"dynamic axes {bad} of input {name!r}: expected axes 1..{rank - 1} of its "
                f"{rank}-d tensor (axis 0, the batch, is always dynamic)"
            )
        found[index] = tuple(sorted(set(axes)))
    return found


def _graph_specs(proto: onnx.ModelProto, kind: str, names: list[str]) -> tuple[TensorSpec, ...]:
    """model.json's tensor specs, read off the exported graph (-1 for every symbolic axis)."""
    shapes = graph_shapes(proto, kind)
    values = {v.name: v for v in (proto.graph.input if kind == "input" else proto.graph.output)}
    specs = []
    for name in names:
        if name not in shapes:
            raise ExportError(f"the exported graph has no {kind} {name!r} (it has {list(shapes)})")
        shape = shapes[name]
        datatype = v2_datatype(onnx_code=values[name].type.tensor_type.elem_type)
        if datatype is None:
            raise ExportError(f"{kind} {name!r} has a dtype the V2 protocol cannot carry")
        if not shape or shape[0] != -1:
            raise ExportError(
                f"{kind} {name!r} has shape {list(shape)} in the graph: every {kind} needs the "
                "batch on axis 0 (the server batches requests along it)"
            )
        specs.append(TensorSpec(name, datatype, shape))
    return tuple(specs)


def export_module(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Sequence[int]] | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance | None = None,
    fold: bool = True,
    classifier: bool | None = None,
    inputs_kind: str = "given inputs",
    random_inputs: bool = False,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    step: Step | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
) -> ModuleExport:
    """Fold/freeze, export to ONNX, audit and prove ``model``; raise on any failed check.

    inputs: one (N, ...) tensor per ``forward`` argument (N ≥ 1; cycled to fill the proof's
    batch sizes). dynamic_axes: input name → axes besides the batch whose size may vary.
    classifier: whether argmax agreement is checked; by default when the model has one output
    of shape (N, K > 1). ``input_name``/``output_name``: the name of a single input/output.
    """
    say = step or (lambda _msg: None)
    tol = tolerance or Tolerance()
    tensors = as_inputs(inputs)
    names = check_names(
        list(input_names)
        if input_names is not None
        else [input_name]
        if input_name and len(tensors) == 1
        else default_input_names(model, len(tensors)),
        "input",
    )
    if len(names) != len(tensors):
        raise ExportError(f"{len(names)} input name(s) for {len(tensors)} input tensor(s)")
    dynamic = _dynamic_by_index(dynamic_axes, names, tensors)
    specs = [
        InputSpec(s.name, s.shape, s.dtype, dynamic.get(i, ()))
        for i, s in enumerate(specs_of(tensors, names))
    ]
    notes = [TRAIN_MODE_NOTE] if _in_training_mode(model) else []
    reference = copy.deepcopy(model).eval()  # the eager original of the proof
    working = copy.deepcopy(reference)
    sample = export_sample(tensors)
    with torch.no_grad():
        try:
            example = reference(*sample)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            # A model that cannot run on its declared input (a wrong --input-shape, a
            # checkpoint whose input spec does not fit the architecture) is the user's input.
            shapes = " and ".join(str(list(t.shape[1:])) for t in sample)
            raise ExportError(
                f"the model cannot run on an input of shape {shapes} (per sample): "
                f"{first_line(exc)}"
            ) from exc
    outputs = output_names_for(example, output_names, default=output_name or "output")
    if classifier is None:
        classifier = (
            isinstance(example, torch.Tensor)
            and example.dim() == 2
            and example.shape[1] > 1
            and example.is_floating_point()
        )

    say("folding and freezing normalization")
    frozen, freeze = freeze_normalization(working, sample, fold=fold)
    say(f"exporting to ONNX (opset {opset})")
    proto = export_onnx(
        frozen,
        sample,
        input_names=names,
        output_names=outputs,
        dynamic_axes=dynamic,
        opset=opset,
    )
    say("auditing the graph")
    graph = audit_graph(proto)
    onnx_bytes = proto.SerializeToString()
    input_specs = _graph_specs(proto, "input", names)
    output_specs = _graph_specs(proto, "output", outputs)

    other = at_other_sizes(tensors, specs)
    other_sizes = {
        f"{spec.name}:{axis}": [spec.shape[axis - 1], 2 * spec.shape[axis - 1]]
        for spec in specs
        for axis in spec.dynamic_axes
    }
    say(f"proving parity at batch sizes {', '.join(map(str, batch_sizes))}")
    batches = proof_batches(reference, tensors, batch_sizes, other)
    parity = prove_parity(
        reference,
        onnx_bytes,
        batches,
        input_names=names,
        output_names=outputs,
        tolerance=tol,
        classifier=classifier,
        inputs_kind=inputs_kind,
        random_inputs=random_inputs,
        batch_sizes=batch_sizes,
        other_sizes=other_sizes,
    )
    require_parity(parity)
    return ModuleExport(
        onnx_bytes=onnx_bytes,
        freeze=freeze,
        graph=graph,
        parity=parity,
        inputs=input_specs,
        outputs=output_specs,
        classifier=classifier,
        batches=batches,
        notes=notes,
    )
