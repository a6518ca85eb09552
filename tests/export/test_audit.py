"""The graph audit: what it counts, and what it refuses to let through."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from normserve.export.audit import audit_graph, census, ort_optimized_census
from normserve.export.errors import ExportError
from normserve.export.sessions import make_session
from tests.export.test_fold import randomize_, randomize_bn


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    randomize_(model, seed)
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.InstanceNorm2d):
            randomize_bn(m, seed + i)
    return model.eval()


def test_stock_exporter_would_leave_a_batch_normalization_for_running_stats_instance_norm():
    # Why the freeze above matters: exported as-is, InstanceNorm with running statistics is a
    # BatchNormalization node, which the audit refuses.
    from normserve.export.onnx_export import export_onnx

    model = _randomized(nn.Sequential(nn.InstanceNorm2d(3, track_running_stats=True)), 9)
    proto = export_onnx(model, torch.randn(2, 3, 4, 4), input_name="input", output_name="out")
    assert census(proto).get("BatchNormalization") == 1
    with pytest.raises(ExportError, match="BatchNormalization"):
        audit_graph(proto)


def test_audit_refuses_group_normalization_below_opset_21():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [2], [1.0, 1.0])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [2], [0.0, 0.0])
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2)
    graph = helper.make_graph([node], "g", [x], [y], initializer=[scale, bias])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ExportError, match="GroupNormalization at opset 18"):
        audit_graph(proto)


def test_census_after_ort_optimization_counts_what_onnx_runtime_runs(tmp_path: Path):
    # y = x + c1 * c2: ONNX Runtime folds the constant product away at ORT_ENABLE_ALL.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    c1 = helper.make_tensor("c1", TensorProto.FLOAT, [2], [1.0, 2.0])
    c2 = helper.make_tensor("c2", TensorProto.FLOAT, [2], [3.0, 4.0])
    nodes = [
        helper.make_node("Mul", ["c1", "c2"], ["c"]),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[c1, c2])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    assert census(proto) == {"Add": 1, "Mul": 1}
    optimized = ort_optimized_census(proto.SerializeToString())
    assert optimized == {"Add": 1}  # the graph ONNX Runtime really runs
    path = tmp_path / "optimized.onnx"
    make_session(proto.SerializeToString(), "ORT_ENABLE_ALL", optimized_model_path=path)
    assert census(onnx.load(str(path))) == optimized


def test_session_factory_turns_a_graph_onnx_runtime_refuses_into_one_line():
    with pytest.raises(ExportError, match="ONNX Runtime cannot load the exported graph: "):
        make_session(b"not an onnx model", "ORT_DISABLE_ALL")
