"""``torch.onnx.export`` with a dynamic batch axis (and any other dynamic axes), quietly."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings

import onnx
import torch
from torch import nn

from normserve.errors import first_line
from normserve.export.errors import ExportError

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "export_onnx", "graph_shapes"]

# Opset 18, on purpose:
# - it is the torch.export-based exporter's native opset in torch 2.13 (its operator library is
#   written against 18; other opsets go through the ONNX version converter);
# - it is ≥ 17, so LayerNorm is one LayerNormalization op;
# - below 21, the exporter writes GroupNorm as InstanceNormalization + a per-channel affine and
#   never emits GroupNormalization-18, whose scale and bias are per group (not torch's
#   semantics; ONNX fixed the definition in opset 21);
# - ONNX Runtime has run opset 18 since 1.14, so the serving install (onnxruntime ≥ 1.18) and
#   older deployed runtimes load it.
# 17..23 are accepted (23 is the newest this exporter and ONNX Runtime were checked with).
DEFAULT_OPSET = 18
MIN_OPSET = 17
MAX_OPSET = 23


@contextlib.contextmanager
def _quiet() -> object:
    """The exporter logs progress to stdout and warns about optional torchvision ops."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    samples: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict[int, tuple[int, ...]] | None = None,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    input_name: str | None = None,
    output_name: str | None = None,
) -> onnx.ModelProto:
    """Export ``model`` (eval mode, no BatchNorm left) with axis 0 of every input and output
    dynamic (one batch size shared by all), and ``dynamic_axes`` (input index → further axes of
    that input) dynamic too.

    ``samples`` (one tensor per input) must have a batch of at least 2 so the exporter does not
    specialize on 1. ``input_name``/``output_name`` name a single input/output.
    ``optimize=False`` skips the exporter's ONNX optimizer, which would otherwise fold any
    BatchNorm still present into a preceding Conv behind the user's back (benchmarks use it
    for the unfolded baseline).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: expected {MIN_OPSET}..{MAX_OPSET} "
            f"(default {DEFAULT_OPSET}); LayerNormalization needs ≥ 17"
        )
    inputs = (samples,) if isinstance(samples, torch.Tensor) else tuple(samples)
    if any(t.shape[0] < 2 for t in inputs):
        raise ValueError("export samples need a batch of at least 2")
    names = input_names or (
        [input_name] if input_name else [f"input_{i}" for i in range(len(inputs))]
    )
    outputs = output_names or ([output_name] if output_name else None)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = dynamic_axes or {}
    shapes = tuple(
        {0: batch, **{axis: torch.export.Dim.DYNAMIC for axis in dynamic.get(i, ())}}
        for i in range(len(inputs))
    )
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                inputs,
                dynamo=True,
                input_names=names,
                output_names=outputs,
                dynamic_shapes=shapes,
                opset_version=opset,
                optimize=optimize,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises a zoo of types; keep the cause's line
        raise ExportError(f"torch.onnx.export failed: {exporter_reason(exc)}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto.producer_name = "normserve"
    return proto


def exporter_reason(exc: BaseException) -> str:
    """The line of an exporter error that says what went wrong: its "Exception summary" (the
    first line is a generic "Failed to ... This is step 2/3" banner), else its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    summary = re.search(r"## Exception summary\s*\n\s*(?:<class '([\w.]+)'>: )?(.+)", text)
    if summary:
        kind = (summary.group(1) or "").rsplit(".", 1)[-1]
        return f"{kind}: {summary.group(2).strip()}" if kind else summary.group(2).strip()
    return first_line(exc)


def graph_shapes(proto: onnx.ModelProto, kind: str) -> dict[str, tuple[int, ...]]:
    """Each graph input's or output's shape, -1 for a symbolic (dynamic) axis."""
    values = proto.graph.input if kind == "input" else proto.graph.output
    initializers = {t.name for t in proto.graph.initializer}
    return {
        value.name: tuple(
            d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
        )
        for value in values
        if value.name not in initializers
    }
