"""The one way export, the proof and the benchmarks open an ONNX Runtime session."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from normserve.errors import first_line
from normserve.export.errors import ExportError

__all__ = ["LEVELS", "Provider", "make_session"]

LEVELS = {
    "ORT_DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
Provider = str | tuple[str, dict[str, str]]


def make_session(
    model: bytes | str | Path,
    level: str,
    providers: list[Provider] | None = None,
    *,
    optimized_model_path: Path | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session at optimization ``level`` (a ``LEVELS`` key), CPU by default.

    ``model`` is the serialized graph or a path to it. ``optimized_model_path`` makes ONNX
    Runtime save the graph it actually runs (after its own rewrites) there, for the audit.
    Load failures become ``ExportError`` with ONNX Runtime's first line.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(
            source, options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception zoo
        raise ExportError(
            f"ONNX Runtime cannot load the exported graph: {first_line(exc)}"
        ) from exc
