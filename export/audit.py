"""Graph audit: the ONNX checker and a census of operators, before and after ORT optimization.

Refused: any BatchNormalization node, in the exported graph or in the graph ONNX Runtime runs
after its own optimizations at ORT_ENABLE_ALL (saved through ``optimized_model_filepath``); and
GroupNormalization below opset 21, whose opset-18 definition scales per *group* where torch's
GroupNorm scales per channel (ONNX fixed the definition in opset 21).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

from normserve.errors import first_line
from normserve.export.errors import ExportError
from normserve.export.sessions import make_session

__all__ = [
    "GROUP_NORM_MIN_OPSET",
    "NORM_OPS",
    "audit_graph",
    "census",
    "norm_ops",
    "opset_of",
    "ort_optimized_census",
]

NORM_OPS = (
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
)
GROUP_NORM_MIN_OPSET = 21


def _op_name(node: onnx.NodeProto) -> str:
    """``Conv`` for the default domain, ``com.microsoft.FusedConv`` for others."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def census(model: onnx.ModelProto) -> dict[str, int]:
    """Operator counts of the main graph, sorted by name."""
    counts = Counter(_op_name(node) for node in model.graph.node)
    return dict(sorted(counts.items()))


def norm_ops(counts: dict[str, int]) -> dict[str, int]:
    """The normalization operators in a census (ONNX ops and ORT's fused contrib ops)."""
    return {op: n for op, n in counts.items() if "Norm" in op.rsplit(".", 1)[-1]}


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model declares."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("the exported graph declares no default-domain opset")


def ort_optimized_census(model_bytes: bytes) -> dict[str, int]:
    """Census of the graph ONNX Runtime actually runs at ORT_ENABLE_ALL on CPU."""
    with tempfile.TemporaryDirectory(prefix="normserve-audit-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        make_session(model_bytes, "ORT_ENABLE_ALL", optimized_model_path=path)
        return census(onnx.load(str(path)))


def audit_graph(model: onnx.ModelProto) -> dict[str, object]:
    """Check the model and count operators; refuse what must not be served."""
    opset = opset_of(model)
    exported = census(model)
    if exported.get("GroupNormalization", 0) and opset < GROUP_NORM_MIN_OPSET:
        raise ExportError(
            f"exported graph holds GroupNormalization at opset {opset}: before opset "
            f"{GROUP_NORM_MIN_OPSET} its scale and bias are per group, not per channel as in "
            "torch.nn.GroupNorm; normserve never emits it"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"exported graph fails the ONNX checker: {first_line(exc)}") from exc
    optimized = ort_optimized_census(model.SerializeToString())
    for stage, counts in (("exported", exported), ("ORT-optimized", optimized)):
        if counts.get("BatchNormalization", 0):
            raise ExportError(
                f"{stage} graph still holds {counts['BatchNormalization']} BatchNormalization "
                "node(s): every batch norm must be folded or frozen (a batch_norm call normserve "
                "could not see, such as one on computed statistics?)"
            )
    return {
        "opset": opset,
        "onnx_nodes": exported,
        "ort_optimized_nodes": optimized,
        "remaining_norm_ops": norm_ops(exported),
        "ort_optimized_norm_ops": norm_ops(optimized),
    }
