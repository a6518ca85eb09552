"""Export one in-memory ``nn.Module``: fold and freeze, export, audit, prove — nothing written.

This is the Python entry point for a user's own model object, and the core of
``normserve export``. The user's module is never touched: it is deep-copied first, and every
step (eval mode, folding, tracing, the eager references of the proof) works on copies, so its
parameters, buffers (running statistics, ``num_batches_tracked``) and ``.training`` flags are
exactly as they were. A model handed over in training mode is exported as its eval-mode
function (running statistics, no dropout), and the export says so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normserve.errors import first_line
from normserve.export.audit import audit_graph
from normserve.export.comparison import Tolerance
from normserve.export.errors import ExportError
from normserve.export.freeze import FreezeReport, freeze_normalization
from normserve.export.onnx_export import DEFAULT_OPSET, export_onnx
from normserve.export.parity import BATCH_SIZES, ParityReport, prove_parity, require_parity

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
    output_shape: list[int]  # per sample, without the batch axis
    classifier: bool
    notes: list[str] = field(default_factory=list)

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


def export_sample(inputs: torch.Tensor) -> torch.Tensor:
    """The trace/export sample: 2 to 4 real inputs (a batch of 1 would specialize the graph)."""
    if len(inputs) == 0:
        raise ExportError("no inputs to trace the model with")
    count = max(2, min(len(inputs), 4))
    return inputs[torch.arange(count) % len(inputs)]


def _in_training_mode(model: nn.Module) -> bool:
    return any(m.training for m in model.modules())


def export_module(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    input_name: str = "input",
    output_name: str = "output",
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance | None = None,
    fold: bool = True,
    classifier: bool | None = None,
    inputs_kind: str = "given inputs",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    step: Step | None = None,
) -> ModuleExport:
    """Fold/freeze, export to ONNX, audit and prove ``model``; raise on any failed check.

    inputs: (N, *input_shape) real inputs (N ≥ 1; cycled to fill the proof's batch sizes).
    classifier: whether argmax agreement is checked; by default when the output is (N, K > 1).
    """
    say = step or (lambda _msg: None)
    tol = tolerance or Tolerance()
    notes = [TRAIN_MODE_NOTE] if _in_training_mode(model) else []
    reference = copy.deepcopy(model).eval()  # the eager original of the proof
    working = copy.deepcopy(reference)
    sample = export_sample(inputs)
    with torch.no_grad():
        try:
            example = reference(sample)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            # A model that cannot run on its declared input (a wrong --input-shape, a
            # checkpoint whose input spec does not fit the architecture) is the user's input.
            raise ExportError(
                f"the model cannot run on an input of shape {list(sample.shape[1:])} "
                f"(per sample): {first_line(exc)}"
            ) from exc
    if not isinstance(example, torch.Tensor):
        raise ExportError(
            f"the model returns {type(example).__name__}: normserve exports models with one "
            "tensor input and one tensor output"
        )
    if classifier is None:
        classifier = example.dim() == 2 and example.shape[1] > 1

    say("folding and freezing normalization")
    frozen, freeze = freeze_normalization(working, sample, fold=fold)
    say(f"exporting to ONNX (opset {opset})")
    proto = export_onnx(frozen, sample, input_name=input_name, output_name=output_name, opset=opset)
    say("auditing the graph")
    graph = audit_graph(proto)
    onnx_bytes = proto.SerializeToString()

    say(f"proving parity at batch sizes {', '.join(map(str, batch_sizes))}")
    parity = prove_parity(
        reference,
        onnx_bytes,
        inputs,
        input_name=input_name,
        tolerance=tol,
        classifier=classifier,
        inputs_kind=inputs_kind,
        batch_sizes=batch_sizes,
    )
    require_parity(parity)
    return ModuleExport(
        onnx_bytes=onnx_bytes,
        freeze=freeze,
        graph=graph,
        parity=parity,
        output_shape=list(example.shape[1:]),
        classifier=classifier,
        notes=notes,
    )
