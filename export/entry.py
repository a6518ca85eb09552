"""A proven export → one repository entry; and ``export_model``, the Python API.

``model.json`` is built as typed objects and written through ``normserve.model_repository``
(a staging directory renamed into place: no half-written entry, ever). The golden probe is two
of the proof's own inputs and ONNX Runtime's outputs for them; the server replays it before
serving a version.

``export_model`` is ``normserve export`` for a model object in memory::

    from normserve.export import export_model

    result = export_model(model, (images, metadata), repository="model_repository",
                          name="mine", labels=["cat", "dog"])
    print(result.path)  # model_repository/mine/1

It runs the same fold/freeze, audit and proof as the command line on the example inputs given
(real ones are best: they are what the proof and the golden probe run on) and writes nothing
unless every check passed.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from normserve.export.comparison import Tolerance, dtype_eps
from normserve.export.errors import ExportError
from normserve.export.freeze import FreezeReport
from normserve.export.inputs import RANDOM_WARNING
from normserve.export.module_export import ModuleExport, export_module
from normserve.export.onnx_export import DEFAULT_OPSET
from normserve.export.parity import NAME_ORT, ParityReport
from normserve.export.sessions import make_session
from normserve.export.signature import as_inputs
from normserve.model_repository import (
    GoldenProbe,
    ModelConfig,
    numpy_dtype,
    plan_entry,
    write_entry,
)

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "ExportResult", "export_model", "golden_probe", "write_export"]

DEFAULT_MAX_BATCH_SIZE = 64
PROBE_SAMPLES = 2


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


def golden_probe(result: ModuleExport) -> GoldenProbe:
    """Two of the proof's inputs and ONNX Runtime's outputs for them.

    The server replays them on every new version before swapping it in. The tolerance is the
    proof's: the largest error it allowed any output (as ``atol``), and 16 eps of the output
    dtype (at least 1e-4) as ``rtol``, for another machine's kernels.
    """
    first = result.batches[0] if result.batches[0].size >= PROBE_SAMPLES else result.batches[1]
    names = [spec.name for spec in result.inputs]
    inputs = {
        name: tensor[:PROBE_SAMPLES].numpy()
        for name, tensor in zip(names, first.inputs, strict=True)
    }
    output_names = [spec.name for spec in result.outputs]
    outputs = make_session(result.onnx_bytes, "ORT_ENABLE_ALL").run(output_names, inputs)
    check = result.parity.check(NAME_ORT)
    bounds = [c.bound for c in check.comparisons.values()] if check else []
    rtol = max(1e-4, *(16 * dtype_eps(numpy_dtype(s.datatype)) for s in result.outputs))
    return GoldenProbe(
        inputs=inputs,
        outputs=dict(zip(output_names, outputs, strict=True)),
        rtol=rtol,
        atol=max(bounds, default=0.0),
    )


def _check_labels(labels: list[str] | None, result: ModuleExport) -> None:
    if labels is None:
        return
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise ExportError("labels must be a non-empty list of non-empty strings")
    output = result.outputs[0]
    if len(output.shape) != 2 or output.shape[1] == -1:
        raise ExportError(
            f"labels need an output of shape [N, classes]; {output.name!r} has {list(output.shape)}"
        )
    if len(labels) != output.shape[1]:
        raise ExportError(
            f"{len(labels)} labels for the {output.shape[1]} classes of output {output.name!r}"
        )


def _warnings(result: ModuleExport) -> list[str]:
    found = list(result.freeze.warnings)
    if result.parity.random_inputs:
        found.append(RANDOM_WARNING)
    return found


def write_export(
    result: ModuleExport,
    *,
    target: Path,
    name: str,
    version: int,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    labels: list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    fold: bool = True,
    force: bool = False,
    report: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """Write ``result`` as the entry ``target`` (from ``plan_entry``); ``report``: what the
    export block records about the source (checkpoint, architecture, reading)."""
    _check_labels(labels, result)
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int)
        or max_batch_size < 1
    ):
        raise ExportError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    config = ModelConfig(
        name=name,
        version=version,
        inputs=result.inputs,
        outputs=result.outputs,
        max_batch_size=max_batch_size,
        labels=labels,
        preprocess=preprocess,
        onnx_sha256=hashlib.sha256(result.onnx_bytes).hexdigest(),
        golden_probe=golden_probe(result),
        export={
            **(report or {}),
            "opset": opset,
            "fold": fold,
            "normalization": result.normalization(),
            "graph": result.graph,
            "parity": result.parity.to_dict(),
            "notes": result.notes,
            "warnings": _warnings(result),
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
    write_entry(target, result.onnx_bytes, config, force)
    return config


def export_model(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    repository: str | Path,
    name: str,
    version: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Sequence[int]] | None = None,
    labels: Sequence[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance | None = None,
    fold: bool = True,
    force: bool = False,
    step: Callable[[str], None] | None = None,
) -> ExportResult:
    """Fold, freeze, export, audit and prove ``model``, then write ``repository/name/version``.

    ``example_inputs``: one tensor per ``forward`` argument, samples on axis 0, real data if
    you have it (the proof and the golden probe run on them). ``dynamic_axes``: input name →
    axes besides the batch whose size may vary (``{"tokens": [1]}``). ``labels``: class names
    of a classifier's first output. Nothing is written unless every check passed; the model
    object is not modified.
    """
    target, chosen = plan_entry(Path(repository), name, version, force)
    tensors = as_inputs(example_inputs)
    result = export_module(
        model,
        tensors,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset=opset,
        tolerance=tolerance,
        fold=fold,
        classifier=True if labels else None,
        inputs_kind=f"given example inputs ({len(tensors[0])} samples)",
        step=step,
    )
    config = write_export(
        result,
        target=target,
        name=name,
        version=chosen,
        max_batch_size=max_batch_size,
        labels=list(labels) if labels is not None else None,
        preprocess=preprocess,
        opset=opset,
        fold=fold,
        force=force,
        report={
            "source": "model object (normserve.export.export_model)",
            "arch": type(model).__qualname__,
        },
    )
    return ExportResult(target, name, chosen, config, result.parity, result.freeze)
