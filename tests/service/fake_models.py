"""Tiny hand-built ONNX models and repository entries for service tests (no torch needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from normserve.model_repository import GoldenProbe, ModelConfig, TensorSpec

W = np.array([[1.0, -2.0], [0.5, 0.25], [-1.5, 3.0]], dtype=np.float32)  # (3, 2)
B = np.array([0.1, -0.2], dtype=np.float32)


def affine_reference(x: np.ndarray, version: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """What the fake model computes: ``y = x @ (W * version) + B`` and ``z = relu(y)``."""
    y = x.astype(np.float64) @ (W.astype(np.float64) * version) + B
    return y, np.maximum(y, 0.0)


def affine_model(version: int = 1) -> bytes:
    """x (N, 3) FP32 → y (N, 2) and z = relu(y); the version scales W so versions differ."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["y"]),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2]),
        ],
        initializer=[
            numpy_helper.from_array(W * version, "W"),
            numpy_helper.from_array(B, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def affine_probe(version: int = 1, *, skew: float = 0.0) -> dict:
    """A golden probe as export records it (two inputs and their outputs), for ``affine``.

    ``skew`` shifts the recorded outputs: a probe that the model can no longer reproduce.
    """
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=np.float32)
    y, z = affine_reference(x, version)
    outputs = {"y": (y + skew).astype(np.float32), "z": z.astype(np.float32)}
    return GoldenProbe({"x": x}, outputs, rtol=1e-5, atol=1e-6).to_json()


def write_entry(
    repository: Path,
    name: str = "affine",
    version: int = 1,
    *,
    max_batch_size: int = 8,
    onnx_bytes: bytes | None = None,
    overrides: dict | None = None,
    replace: bool = False,
) -> Path:
    """A repository entry as export writes it; ``overrides`` patch model.json for bad cases.

    Written into a hidden staging directory and renamed into place, as export does, so a
    polling server never sees half an entry; ``replace`` swaps out an existing version.
    """
    data = onnx_bytes if onnx_bytes is not None else affine_model(version)
    entry = repository / name / str(version)
    staging = repository / name / f".staging-{version}"
    staging.mkdir(parents=True)
    final, entry = entry, staging
    (entry / "model.onnx").write_bytes(data)
    meta = ModelConfig(
        name=name,
        version=version,
        inputs=(TensorSpec("x", "FP32", (-1, 3)),),
        outputs=(TensorSpec("y", "FP32", (-1, 2)), TensorSpec("z", "FP32", (-1, 2))),
        max_batch_size=max_batch_size,
        labels=["left", "right"],
        onnx_sha256=hashlib.sha256(data).hexdigest(),
        export={"arch": "hand-built affine", "opset": 18},
    ).to_json()
    meta["golden_probe"] = affine_probe(version) if onnx_bytes is None else None
    meta.update(overrides or {})
    (entry / "model.json").write_text(json.dumps(meta))
    if replace and final.exists():
        retired = repository / name / f".retired-{version}"
        final.rename(retired)
        staging.rename(final)
        for child in retired.iterdir():
            child.unlink()
        retired.rmdir()
    else:
        staging.rename(final)
    return final
