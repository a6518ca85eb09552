"""``normserve export``: checkpoint → folded, frozen, audited, proven repository entry."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from normserve.export.comparison import Tolerance
from normserve.export.freeze import FreezeReport
from normserve.export.module_export import ModuleExport, export_module
from normserve.export.onnx_export import DEFAULT_OPSET
from normserve.export.parity import ParityReport
from normserve.export.rebuild import build_eval_model, parity_inputs, sha256_file
from normserve.export.sessions import make_session
from normserve.model_repository import (
    GoldenProbe,
    ModelConfig,
    TensorSpec,
    plan_entry,
    v2_datatype,
    write_entry,
)
from normserve.models.checkpoint import Checkpoint, load_checkpoint

__all__ = ["ExportOptions", "ExportResult", "golden_probe", "run_export"]

Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    repository: Path = Path("model_repository")
    name: str | None = None
    version: int | None = None
    arch: str | None = None
    arch_config: dict[str, Any] | None = None
    input_shape: list[int] | None = None
    opset: int = DEFAULT_OPSET
    tolerance: Tolerance = field(default_factory=Tolerance)
    fold: bool = True
    force: bool = False
    max_batch_size: int = 64


@dataclass(frozen=True)
class ExportResult:
    path: Path
    name: str
    version: int
    config: ModelConfig
    parity: ParityReport
    freeze: FreezeReport

    @property
    def metadata(self) -> dict[str, Any]:
        """The ``model.json`` document that was written."""
        return self.config.to_json()


def golden_probe(
    model_bytes: bytes, inputs: torch.Tensor, input_name: str, output_name: str, tol: Tolerance
) -> GoldenProbe:
    """Two real inputs and ONNX Runtime's outputs for them, as V2 JSON tensors.

    The server runs them on every new version before swapping it in and refuses the version
    when its outputs differ by more than the export tolerance.
    """
    batch = inputs[torch.arange(2) % len(inputs)].numpy()
    (output,) = make_session(model_bytes, "ORT_ENABLE_ALL").run([output_name], {input_name: batch})
    return GoldenProbe({input_name: batch}, {output_name: output}, rtol=tol.rtol, atol=tol.atol)


def _model_config(
    *,
    checkpoint: Checkpoint,
    options: ExportOptions,
    name: str,
    version: int,
    result: ModuleExport,
    probe: GoldenProbe,
) -> ModelConfig:
    datatype = v2_datatype(numpy=checkpoint.input.dtype)
    assert datatype is not None, checkpoint.input.dtype  # the checkpoint reader checked it
    return ModelConfig(
        name=name,
        version=version,
        inputs=(TensorSpec(checkpoint.input.name, datatype, (-1, *checkpoint.input.shape)),),
        outputs=(TensorSpec(checkpoint.output_name, datatype, (-1, *result.output_shape)),),
        max_batch_size=options.max_batch_size,
        labels=checkpoint.labels,
        preprocess=checkpoint.preprocess,
        onnx_sha256=hashlib.sha256(result.onnx_bytes).hexdigest(),
        golden_probe=probe,
        export={
            "checkpoint_sha256": sha256_file(options.checkpoint),
            "arch": checkpoint.arch,
            "arch_config": checkpoint.arch_config,
            "opset": options.opset,
            "fold": options.fold,
            "normalization": result.normalization(),
            "graph": result.graph,
            "parity": result.parity.to_dict(),
            "notes": result.notes,
            "training_metrics": checkpoint.metrics,
            "tools": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "numpy": np.__version__,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def run_export(options: ExportOptions, step: Step | None = None) -> ExportResult:
    """Do every step in memory; write the entry only after every check has passed."""
    say = step or (lambda _msg: None)
    checkpoint = load_checkpoint(
        options.checkpoint,
        arch=options.arch,
        input_shape=options.input_shape,
        arch_config=options.arch_config,
    )
    name = options.name or checkpoint.arch.rsplit(":", 1)[-1]
    target, version = plan_entry(options.repository, name, options.version, options.force)

    say(f"rebuilding {checkpoint.arch}")
    original = build_eval_model(checkpoint)
    inputs, inputs_kind = parity_inputs(checkpoint)
    result = export_module(
        original,
        inputs,
        input_name=checkpoint.input.name,
        output_name=checkpoint.output_name,
        opset=options.opset,
        tolerance=options.tolerance,
        fold=options.fold,
        classifier=True if checkpoint.labels else None,
        inputs_kind=inputs_kind,
        step=say,
    )
    config = _model_config(
        checkpoint=checkpoint,
        options=options,
        name=name,
        version=version,
        result=result,
        probe=golden_probe(
            result.onnx_bytes,
            inputs,
            checkpoint.input.name,
            checkpoint.output_name,
            options.tolerance,
        ),
    )
    write_entry(target, result.onnx_bytes, config, options.force)
    return ExportResult(target, name, version, config, result.parity, result.freeze)
