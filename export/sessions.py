"""ONNX Runtime sessions for the proof, at a named graph optimization level."""

from __future__ import annotations

import onnxruntime as ort

from normserve.export.errors import ExportError

__all__ = ["LEVELS", "Provider", "make_session"]

LEVELS = {
    "ORT_DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
Provider = str | tuple[str, dict[str, str]]


def make_session(
    model_bytes: bytes, level: str, providers: list[Provider] | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session at optimization ``level``; errors become ``ExportError``."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            model_bytes, options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception zoo
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {first}") from exc
