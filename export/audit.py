"""Graph audit: the ONNX checker and a census of operators, before and after ORT optimization."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from export.errors import ExportError

__all__ = ["NORM_OPS", "audit_graph", "census", "ort_optimized_census"]

NORM_OPS = (
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
)


def census(model: onnx.ModelProto) -> dict[str, int]:
    """Operator counts of the main graph, sorted by name."""
    counts = Counter(node.op_type for node in model.graph.node)
    return dict(sorted(counts.items()))


def ort_optimized_census(model_bytes: bytes) -> dict[str, int]:
    """Census of the graph ONNX Runtime actually runs at ORT_ENABLE_ALL on CPU."""
    with tempfile.TemporaryDirectory(prefix="normserve-audit-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return census(onnx.load(str(path)))


def audit_graph(model: onnx.ModelProto) -> dict[str, object]:
    """Check the model and count operators; refuse any BatchNormalization left in it."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ExportError(f"exported graph fails the ONNX checker: {first}") from exc
    exported = census(model)
    optimized = ort_optimized_census(model.SerializeToString())
    for stage, counts in (("exported", exported), ("ORT-optimized", optimized)):
        if counts.get("BatchNormalization", 0):
            raise ExportError(
                f"{stage} graph still holds {counts['BatchNormalization']} BatchNormalization "
                "node(s): every batch norm must be folded or frozen"
            )
    remaining = {op: exported[op] for op in NORM_OPS if exported.get(op)}
    return {
        "onnx_nodes": exported,
        "ort_optimized_nodes": optimized,
        "remaining_norm_ops": remaining,
    }
