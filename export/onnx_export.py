"""``torch.onnx.export`` with a dynamic batch axis, quietly, into bytes."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from export.errors import ExportError

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export_onnx"]

# Opset 18: the torch.export-based exporter's native opset in torch 2.13, and ≥ 17 so
# LayerNormalization is a single op.
DEFAULT_OPSET = 18
MIN_OPSET = 17


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
    sample: torch.Tensor,
    *,
    input_name: str,
    output_name: str,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export ``model`` (eval mode, no BatchNorm left) with axis 0 of input and output dynamic.

    ``sample`` must have a batch of at least 2 so the exporter does not specialize on 1.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: normserve needs ≥ {MIN_OPSET}")
    if sample.shape[0] < 2:
        raise ValueError("export sample needs a batch of at least 2")
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (sample,),
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                optimize=True,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises a zoo of types; keep the first line
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto.producer_name = "normserve"
    return proto
