"""The proof's extra witnesses: the ONNX reference evaluator and the CUDA provider check."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from normserve.export.comparison import Batch, Tolerance
from normserve.export.cross_checks import (
    cuda_check,
    cuda_unavailable_reason,
    device_check,
    reference_evaluator_check,
    tf32_disabled,
)

TOL = Tolerance()  # the proof's default rule


def _linear_graph(weight: np.ndarray) -> bytes:
    """y = x @ weight, as a hand-built ONNX graph with a dynamic batch."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[1]])
    w = helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["y"])], "g", [x], [y], initializer=[w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


@pytest.fixture
def linear() -> tuple[nn.Linear, bytes]:
    torch.manual_seed(0)
    module = nn.Linear(4, 3, bias=False).eval()
    return module, _linear_graph(module.weight.detach().numpy().T.copy())


def _references(module: nn.Module, sizes: tuple[int, ...]) -> list[Batch]:
    out = []
    with torch.no_grad():
        for n in sizes:
            x = torch.randn(n, 4)
            out.append(Batch((x,), [module(x).numpy()], [module.double()(x.double()).numpy()]))
            module.float()
    return out


def test_reference_evaluator_agrees_on_a_correct_graph_and_catches_a_wrong_one(linear):
    module, good = linear
    refs = _references(module, (1, 2, 7, 33))
    check = reference_evaluator_check(good, refs, ["input"], ["y"], TOL)
    assert check.ran
    assert check.ok
    assert check.details["batch_sizes"] == [1, 2, 7]  # large batches are left to ORT
    bad = _linear_graph(module.weight.detach().numpy().T * 1.001)
    wrong = reference_evaluator_check(bad, refs, ["input"], ["y"], TOL)
    assert wrong.ran
    assert not wrong.ok


def test_device_check_machinery_on_the_cpu_provider(linear):
    # The CUDA check is device_check with the CUDA provider; here it runs on the CPU provider so
    # its comparisons are exercised on every machine.
    module, good = linear
    refs = _references(module, (1, 7))
    check = device_check(
        module,
        good,
        refs,
        ["input"],
        ["y"],
        TOL,
        providers=["CPUExecutionProvider"],
        torch_device="cpu",
    )
    assert check.ran
    assert check.ok
    assert set(check.comparisons) == {"ORT_DISABLE_ALL y", "ORT_ENABLE_ALL y"}
    bad = _linear_graph(module.weight.detach().numpy().T + 0.01)
    assert not device_check(
        module,
        bad,
        refs,
        ["input"],
        ["y"],
        TOL,
        providers=["CPUExecutionProvider"],
        torch_device="cpu",
    ).ok


def test_tf32_is_off_inside_and_restored_after():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with tf32_disabled():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    after = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    assert after == before


@pytest.mark.skipif(
    cuda_unavailable_reason() is None, reason="a CUDA provider is present: the GPU test runs"
)
def test_without_a_cuda_provider_the_check_is_skipped_with_its_reason(linear):
    module, good = linear
    check = cuda_check(module, good, _references(module, (2,)), ["input"], ["y"], TOL)
    assert not check.ran
    assert check.skipped == cuda_unavailable_reason()
    assert "CUDAExecutionProvider" in check.to_dict()["skipped"]
    assert check.ok  # a skip is reported, not failed


def test_reference_evaluator_reports_what_it_cannot_run():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    node = helper.make_node("FusedThing", ["input"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)],
    )
    refs = [Batch((torch.zeros(1, 2),), [np.zeros((1, 2), np.float32)], [np.zeros((1, 2))])]
    check = reference_evaluator_check(model.SerializeToString(), refs, ["input"], ["y"], TOL)
    assert not check.ran
    assert check.skipped is not None
    assert "cannot run this graph" in check.skipped
    assert onnx.__version__  # the skip names the evaluator; the version is recorded on success
