"""A hand-built two-input ONNX model for the gRPC tests (no torch), beside fake_models' affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.service.fake_models import write_entry


def pair_reference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``pair`` computes, in float64: ``sum = a + b`` and ``product = a * b``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return a64 + b64, a64 * b64


def pair_model() -> bytes:
    """a (N, 3) FP32 and b (N, 3) INT32 → sum and product (N, 3) FP32."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["sum"]),
            helper.make_node("Mul", ["a", "bf"], ["product"]),
        ],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.INT32, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, ["batch", 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_pair(repository: Path, max_batch_size: int = 16) -> Path:
    spec = [{"name": "a", "datatype": "FP32", "shape": [-1, 3]}]
    spec.append({"name": "b", "datatype": "INT32", "shape": [-1, 3]})
    outputs = [{"name": n, "datatype": "FP32", "shape": [-1, 3]} for n in ("sum", "product")]
    return write_entry(
        repository,
        "pair",
        1,
        max_batch_size=max_batch_size,
        onnx_bytes=pair_model(),
        overrides={"inputs": spec, "outputs": outputs, "labels": None},
    )
