"""Hard cases through the whole export: fold/freeze → ONNX → audit → parity, against eager.

Each export costs ~1-2 s, so a few models carry many cases each; the fold decisions are checked
per case in test_freeze.py. Every export here must reach zero BatchNormalization nodes in the
exported graph and in the graph ONNX Runtime runs after its own optimizations, and must pass the
full proof (both ORT levels vs eager fp32 and fp64, batch sizes 1/2/7/33, batch invariance).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from normserve.export.audit import census
from normserve.export.comparison import Tolerance
from normserve.export.cross_checks import cuda_unavailable_reason
from normserve.export.errors import ExportError
from normserve.export.module_export import ModuleExport, export_module
from tests.export.test_fold import randomize_, randomize_bn

RTOL, ATOL = 1e-4, 1e-5  # the export's default gate (DESIGN.md §3)


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    randomize_(model, seed)
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.InstanceNorm2d) and (
            m.running_mean is not None
        ):
            randomize_bn(m, seed + 100 + i)
    return model.eval()


def _onnx_ops(result: ModuleExport) -> dict[str, int]:
    return census(onnx.load_from_string(result.onnx_bytes))


def _assert_proven(result: ModuleExport) -> None:
    parity = result.parity
    assert parity.ok, parity.failures()
    onnxruntime = parity.check("ONNX Runtime CPU")
    assert onnxruntime is not None
    assert {key.split()[0] for key in onnxruntime.comparisons} == {
        "ORT_DISABLE_ALL",
        "ORT_ENABLE_ALL",
    }
    assert parity.batch_sizes == (1, 2, 7, 33)
    invariance = parity.check("batch invariance")
    assert invariance is not None
    assert invariance.ok
    assert result.graph["onnx_nodes"].get("BatchNormalization", 0) == 0
    assert result.graph["ort_optimized_nodes"].get("BatchNormalization", 0) == 0


def _assert_matches_eager(result: ModuleExport, model: nn.Module, x: torch.Tensor) -> None:
    """An independent check of the bytes: a fresh ORT session against the eager model."""
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


class Conv2dZoo(nn.Module):
    """Grouped and depthwise convs with and without bias, a residual, BN → conv, reused BN."""

    def __init__(self) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(4)  # standalone BN on the input → folds forward
        self.stem = nn.Conv2d(4, 8, 1)  # padding 0
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn_grouped = nn.BatchNorm2d(8, momentum=None)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn_depthwise = nn.BatchNorm2d(8, affine=False)
        self.skip = nn.Conv2d(8, 8, 3, padding=1)  # output feeds BN and the residual add
        self.bn_skip = nn.BatchNorm2d(8)
        self.after_relu = nn.BatchNorm2d(8)  # conv → relu → BN: frozen
        self.head = nn.Conv2d(8, 8, 3, padding=1)  # zero padding: the BN before it is frozen
        self.shared = nn.BatchNorm2d(8)  # used twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(self.input_bn(x))
        y = torch.relu(self.bn_grouped(self.grouped(y)))
        y = self.bn_depthwise(self.depthwise(y))
        s = self.skip(y)
        y = torch.relu(self.bn_skip(s) + s)
        y = self.after_relu(y)
        y = self.shared(self.head(y))
        return self.shared(torch.relu(y)).mean(dim=(2, 3))  # (N, 8)


def test_conv2d_zoo_exports_folded_frozen_and_proven():
    model = _randomized(Conv2dZoo(), 1)
    with torch.no_grad():  # near-zero variance and a negative gamma in a folded BN
        model.bn_grouped.running_var[:2] = torch.tensor([1e-8, 0.0])
        model.bn_grouped.weight[0] = -2.0
    x = torch.randn(40, 4, 9, 9, generator=torch.Generator().manual_seed(2))
    result = export_module(model, x, output_name="y")
    _assert_proven(result)
    freeze = result.freeze
    assert freeze.folded == {"bn+conv2d": 1, "conv2d+bn": 3}
    # frozen: bn_skip (residual), after_relu (nonlinearity), shared's second call (after relu)
    assert freeze.frozen_affine == 3
    assert freeze.batch_norm_calls == 7
    assert _onnx_ops(result)["Conv"] == 5
    assert result.classifier  # (N, 8): argmax agreement was checked
    assert result.parity.argmax_agreement == 1.0
    ref = result.parity.check("reference evaluator")
    assert ref is not None
    assert ref.ran, ref.skipped
    assert ref.ok
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x[:5].numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x[:5]).numpy(), rtol=RTOL, atol=ATOL)


class SequenceZoo(nn.Module):
    """(N, C, L): Conv1d + BN, grouped ConvTranspose1d + BN, and a Linear on (N, C, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(8)
        self.up = nn.ConvTranspose1d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.bn2 = nn.BatchNorm1d(6)
        self.linear = nn.Linear(10, 10)  # acts on L, the last axis
        self.bn3 = nn.BatchNorm1d(6)  # normalizes C: must not be folded into the Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv(x)))  # (N, 8, 5)
        y = torch.relu(self.bn2(self.up(y)))  # (N, 6, 10)
        return self.bn3(self.linear(y))  # (N, 6, 10)


def test_sequence_zoo_conv_transpose_groups_and_linear_on_ncl():
    model = _randomized(SequenceZoo(), 3)
    x = torch.randn(40, 4, 5, generator=torch.Generator().manual_seed(4))
    result = export_module(model, x)
    _assert_proven(result)
    assert result.freeze.folded == {"conv1d+bn": 1, "convtranspose1d+bn": 1}
    assert result.freeze.frozen_affine == 1
    assert not result.classifier
    _assert_matches_eager(result, model, x[:7])


class VolumeZoo(nn.Module):
    """Conv3d + BN, grouped ConvTranspose3d (stride 2, output_padding) + BN, Linear + BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(4)
        self.up = nn.ConvTranspose3d(
            4, 4, 3, stride=2, padding=1, output_padding=1, groups=4, bias=False
        )
        self.bn2 = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 5)
        self.bn3 = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv(x)))
        y = self.bn2(self.up(y)).mean(dim=(2, 3, 4))  # (N, 4)
        return self.bn3(self.fc(y))


def test_volume_zoo_conv3d_and_grouped_conv_transpose3d():
    model = _randomized(VolumeZoo(), 5)
    x = torch.randn(40, 2, 3, 4, 3, generator=torch.Generator().manual_seed(6))
    result = export_module(model, x)
    _assert_proven(result)
    assert result.freeze.folded == {"conv3d+bn": 1, "convtranspose3d+bn": 1, "linear+bn": 1}
    assert result.freeze.frozen_affine == 0
    ref = result.parity.check("reference evaluator")
    assert ref is not None
    assert ref.skipped is not None
    assert "ConvTranspose mishandles group=4" in ref.skipped
    _assert_matches_eager(result, model, x[:7])


class NormZoo(nn.Module):
    """Every per-sample norm configuration the issue names, plus a running-stats InstanceNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.in_default = nn.InstanceNorm2d(6)
        self.gn_one = nn.GroupNorm(1, 6)
        self.gn_all = nn.GroupNorm(6, 6)
        self.in_affine = nn.InstanceNorm2d(6, affine=True)
        self.in_running = nn.InstanceNorm2d(6, affine=True, track_running_stats=True)
        self.ln_multi = nn.LayerNorm([5, 5])
        self.ln_plain = nn.LayerNorm(5, elementwise_affine=False)
        self.ln_no_bias = nn.LayerNorm(5, bias=False)
        self.fc = nn.Linear(6, 8)
        self.gn_2d = nn.GroupNorm(2, 8)  # on (N, C)
        self.gn_no_affine = nn.GroupNorm(4, 8, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.in_default(self.conv(x))
        y = torch.relu(self.gn_all(self.gn_one(y)))
        y = self.in_affine(y) + self.in_running(y)
        y = self.ln_no_bias(self.ln_plain(self.ln_multi(y)))
        y = self.gn_2d(self.fc(y.mean(dim=(2, 3))))  # (N, 8)
        return self.gn_no_affine(y)


def test_per_sample_norms_become_onnx_ops_never_group_normalization_18():
    model = _randomized(NormZoo(), 7)
    x = torch.randn(40, 3, 5, 5, generator=torch.Generator().manual_seed(8)) * 3 + 1
    result = export_module(model, x)
    _assert_proven(result)
    ops = _onnx_ops(result)
    assert "GroupNormalization" not in ops
    assert ops["LayerNormalization"] == 3
    # 2 InstanceNorms + 4 GroupNorms written as InstanceNormalization over (N, G, -1)
    assert ops["InstanceNormalization"] == 6
    assert result.freeze.instance_norm_running_stats_calls == 1
    assert result.freeze.frozen_affine == 1  # in_running's input also feeds in_affine
    norm = result.normalization()
    assert norm["remaining_norm_ops"] == {"InstanceNormalization": 6, "LayerNormalization": 3}
    assert norm["batch_normalization_nodes"] == {"exported": 0, "ort_optimized": 0}
    ref = result.parity.check("reference evaluator")
    assert ref is not None
    assert ref.ran, ref.skipped
    assert ref.ok
    _assert_matches_eager(result, model, x[:7])


class TrainModeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(self.drop(y))


def test_model_in_train_mode_exports_eval_function_and_is_left_exactly_as_it_was():
    model = _randomized(TrainModeNet(), 10).train()
    model.bn.num_batches_tracked.fill_(7)
    params = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    x = torch.randn(40, 3, 6, 6, generator=torch.Generator().manual_seed(11))

    result = export_module(model, x)

    _assert_proven(result)
    assert any("training mode" in note for note in result.notes)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key  # running stats, num_batches_tracked too
    for name, p in model.named_parameters():
        assert p is params[name]
        assert p.requires_grad == grads[name]
    # The graph is the eval-mode function: running statistics, no dropout.
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x[:8].numpy()})
    with torch.no_grad():
        eval_out = copy.deepcopy(model).eval()(x[:8]).numpy()
        train_out = copy.deepcopy(model)(x[:8]).numpy()
    np.testing.assert_allclose(got, eval_out, rtol=RTOL, atol=ATOL)
    assert not np.allclose(got, train_out, rtol=1e-2, atol=1e-2)


def test_model_torch_fx_cannot_trace_is_frozen_and_still_exported():
    from tests.export.test_freeze import ShapeDependent

    model = _randomized(ShapeDependent(), 14)
    x = torch.randn(40, 3, 6, 6, generator=torch.Generator().manual_seed(15))
    result = export_module(model, x)
    _assert_proven(result)
    assert not result.freeze.traced
    assert result.freeze.frozen_affine == 1
    assert any("cannot trace" in w for w in result.freeze.warnings)
    _assert_matches_eager(result, model, x[:7])


def test_batch_norm_without_running_stats_is_refused_before_anything_is_exported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ExportError, match=r"track_running_stats=False.*depends on the other"):
        export_module(model.eval(), torch.randn(4, 3, 5, 5))


def test_model_returning_something_other_than_tensors_is_refused():
    class Counted(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
            return x, 3

    with pytest.raises(ExportError, match="returns int at 'output_1'"):
        export_module(Counted(), torch.randn(2, 3))


def test_impossible_tolerance_fails_the_proof():
    model = _randomized(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), 12)
    with pytest.raises(ExportError, match="parity check failed"):
        export_module(model, torch.randn(8, 3, 5, 5), tolerance=Tolerance(multiple=0.0, floor=0.0))


@pytest.mark.gpu
@pytest.mark.skipif(cuda_unavailable_reason() is not None, reason=str(cuda_unavailable_reason()))
def test_cuda_provider_matches_eager_with_tf32_off():
    model = _randomized(Conv2dZoo(), 13)
    result = export_module(model, torch.randn(40, 4, 9, 9))
    cuda = result.parity.check("CUDA")
    assert cuda is not None
    assert cuda.ran, cuda.skipped
    assert cuda.ok
    assert cuda.details["tf32"] is False
