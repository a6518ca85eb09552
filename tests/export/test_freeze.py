"""Graph-level folding decisions: what folds, what is frozen, and equality with eager."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normserve.export.errors import ExportError
from normserve.export.fold import FrozenAffine
from normserve.export.freeze import freeze_normalization
from normserve.models.registry import build_model
from tests.export.test_fold import randomize_, randomize_bn

# float32 through up to four layers of randomized weights (outputs reach |y| ~ 10, reductions over
# up to 512 terms): folding reorders the rounding, so ~1e-5 relative differences are expected.
RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test draws its inputs from the same seed: a comparison that passes, passes always."""
    torch.manual_seed(0)


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    randomize_(model, seed)
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            randomize_bn(m, seed + 10 + i)
    return model.eval()


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _check_equal(model: nn.Module, x: torch.Tensor, **kwargs: bool):
    original = copy.deepcopy(model)
    frozen, report = freeze_normalization(copy.deepcopy(model), x, **kwargs)
    assert not _batch_norms(frozen)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), original(x), rtol=RTOL, atol=ATOL)
    return frozen, report


def test_digits_cnn_folds_every_batch_norm():
    model = _randomized(build_model("digits_cnn"))
    x = torch.rand(4, 1, 8, 8) * 16
    _, report = _check_equal(model, x)
    assert report.folded == {"conv2d+bn": 2, "linear+bn": 1}
    assert report.frozen_affine == 0


def test_no_fold_freezes_every_batch_norm_as_affine():
    model = _randomized(build_model("digits_cnn"))
    frozen, report = _check_equal(model, torch.rand(4, 1, 8, 8) * 16, fold=False)
    assert report.folded == {}
    assert report.frozen_affine == 3
    assert sum(isinstance(m, FrozenAffine) for m in frozen.modules()) == 3


class ConvReluBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class Residual(nn.Module):
    """conv's output feeds the BN and the skip connection: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class LinearOnSequence(nn.Module):
    """Linear over (N, C, L)'s last axis then BN1d over C: not the (N, C) fold pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x))


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (ConvReluBN(), torch.randn(2, 3, 5, 5)),
        (Residual(), torch.randn(2, 4, 5, 5)),
        (LinearOnSequence(), torch.randn(3, 5, 6)),
    ],
    ids=["nonlinearity-between", "second-consumer", "linear-on-NCL"],
)
def test_unfoldable_patterns_are_frozen_not_folded(model, x):
    _, report = _check_equal(_randomized(model, 3), x)
    assert report.folded == {}
    assert report.frozen_affine == 1


def test_batch_norm_without_running_stats_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(ExportError, match="statistics of each batch"):
        freeze_normalization(model, torch.randn(2, 1, 5, 5))


def test_untouched_user_model():
    model = _randomized(build_model("digits_cnn"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_normalization(copy.deepcopy(model), torch.rand(2, 1, 8, 8))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- every fold pattern, against eager -------------------------------------------------------


def _conv_bn(dim: int, groups: int, bias: bool, c_in: int = 4, c_out: int = 8) -> nn.Module:
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1]
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1]
    return nn.Sequential(conv(c_in, c_out, 3, padding=1, groups=groups, bias=bias), bn(c_out))


def _input(dim: int, channels: int = 4, batch: int = 3) -> torch.Tensor:
    spatial = {1: (11,), 2: (7, 6), 3: (5, 4, 6)}[dim]
    return torch.randn(batch, channels, *spatial, generator=torch.Generator().manual_seed(dim))


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize(
    ("groups", "bias"), [(1, True), (1, False), (2, True), (4, False)], ids=str
)
def test_conv_bn_folds_any_dim_groups_and_bias(dim, groups, bias):
    _, report = _check_equal(_randomized(_conv_bn(dim, groups, bias), dim), _input(dim))
    assert report.folded == {f"conv{dim}d+bn": 1}
    assert report.frozen_affine == 0


def test_depthwise_conv_bn_folds():
    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6))
    _, report = _check_equal(_randomized(model, 5), _input(2, channels=6))
    assert report.folded == {"conv2d+bn": 1}


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_transpose_bn_folds_with_groups_stride_and_output_padding(dim, groups):
    conv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dim - 1]
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dim - 1]
    model = nn.Sequential(
        conv(4, 8, 3, stride=2, padding=1, output_padding=1, groups=groups, bias=groups != 2),
        bn(8),
    )
    _, report = _check_equal(_randomized(model, 6 + dim), _input(dim))
    assert report.folded == {f"convtranspose{dim}d+bn": 1}


def test_linear_bn_on_n_c_folds():
    model = nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5))
    _, report = _check_equal(_randomized(model, 7), torch.randn(4, 7))
    assert report.folded == {"linear+bn": 1}


class Chain(nn.Module):
    """conv → bn → bn: the second BN folds into the conv the first one was folded into."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.bn1(self.conv(x)))


def test_chained_batch_norms_fold_one_after_another():
    _, report = _check_equal(_randomized(Chain(), 8), torch.randn(2, 3, 6, 6))
    assert report.folded == {"conv2d+bn": 2}


# --- BN before a conv: fold forward only where exact -----------------------------------------


class BNThenConv(nn.Module):
    def __init__(self, padding: int, padding_mode: str = "zeros", groups: int = 1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 6, 3, padding=padding, padding_mode=padding_mode, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


@pytest.mark.parametrize("groups", [1, 2])
def test_standalone_bn_on_input_folds_into_following_conv_without_padding(groups):
    _, report = _check_equal(_randomized(BNThenConv(0, groups=groups), 9), _input(2))
    assert report.folded == {"bn+conv2d": 1}
    assert report.frozen_affine == 0


def test_bn_before_reflect_padded_conv_folds():
    _, report = _check_equal(_randomized(BNThenConv(1, "reflect"), 10), _input(2))
    assert report.folded == {"bn+conv2d": 1}


def test_bn_before_zero_padded_conv_is_frozen():
    _, report = _check_equal(_randomized(BNThenConv(1), 11), _input(2))
    assert report.folded == {}
    assert report.frozen_affine == 1
    (decision,) = report.decisions
    assert "pads with zeros" in decision.reason
    assert "the model input" in decision.reason


def test_bn_before_linear_on_n_c_folds_forward():
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3))
    _, report = _check_equal(_randomized(model, 12), torch.randn(4, 6))
    assert report.folded == {"bn+linear": 1}


# --- what must not fold ---------------------------------------------------------------------


class SharedWeights(nn.Module):
    """Two convs holding the same weight Parameter; each is followed by its own BN."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.b.weight = self.a.weight
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.b(torch.relu(self.bn_a(self.a(x)))))


def test_shared_conv_weights_are_cloned_before_folding():
    model = _randomized(SharedWeights(), 13)
    shared = model.a.weight.detach().clone()
    frozen, report = _check_equal(model, torch.randn(2, 3, 6, 6))
    assert report.folded == {"conv2d+bn": 2}
    assert torch.equal(model.a.weight, shared)
    assert model.a.weight is model.b.weight  # the model is still tied
    folded = [m for m in frozen.modules() if isinstance(m, nn.Conv2d)]
    assert len(folded) == 2
    assert folded[0].weight is not folded[1].weight


class ReusedConv(nn.Module):
    """One conv called twice; folding one call's BN would change the other call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(self.conv(x)))


def test_conv_called_twice_is_not_folded_into():
    _, report = _check_equal(_randomized(ReusedConv(), 14), torch.randn(2, 3, 6, 6))
    assert report.folded == {}
    assert report.frozen_affine == 1
    assert "called 2 times" in report.decisions[0].reason


class BNUsedTwice(nn.Module):
    """One BatchNorm module applied after two different convs, then on a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.bn(self.c1(x)), self.bn(self.c2(x))
        return self.bn(torch.relu(a + b))


def test_batch_norm_module_used_three_times_folds_twice_and_freezes_once():
    model = _randomized(BNUsedTwice(), 15)
    _, report = _check_equal(model, torch.randn(2, 3, 6, 6))
    assert report.batch_norm_calls == 3
    assert report.folded == {"conv2d+bn": 2}
    assert report.frozen_affine == 1


class WeightStandardizedConv(nn.Conv2d):
    """Standardizes its weight at every call: scaling the weight by a fold would be undone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_customized_conv_subclass_is_not_folded_into():
    model = nn.Sequential(WeightStandardizedConv(3, 4, 3), nn.BatchNorm2d(4))
    _, report = _check_equal(_randomized(model, 16), torch.randn(2, 3, 6, 6))
    assert report.folded == {}
    assert report.frozen_affine == 1


class HandWrittenNorm(nn.Module):
    """A user's own eval-mode batch norm through F.batch_norm and its buffers."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(c))
        self.register_buffer("var", torch.rand(c) + 0.5)
        self.weight = nn.Parameter(torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.mean, self.var, self.weight, None, False, 0.1, 1e-3)


def test_functional_batch_norm_on_buffers_is_frozen():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), HandWrittenNorm(4)).eval()
    frozen, report = _check_equal(model, torch.randn(2, 3, 6, 6))
    assert report.frozen_affine == 1
    assert report.batch_norm_calls == 1
    assert sum(isinstance(m, FrozenAffine) for m in frozen.modules()) == 1


class ShapeDependent(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it (torch.export can)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.shape[-1] > 100:
            return y[..., :100]
        return y


def test_untraceable_model_has_every_batch_norm_frozen():
    _, report = _check_equal(_randomized(ShapeDependent(), 17), torch.randn(2, 3, 6, 6))
    assert not report.traced
    assert report.frozen_affine == 1
    assert report.folded == {}
    assert any("cannot trace" in w for w in report.warnings)


class CustomBN(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def test_untraceable_batch_norm_subclass_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), CustomBN(4)).eval()
    with pytest.raises(ExportError, match="cannot tell what it computes"):
        freeze_normalization(model, torch.randn(2, 3, 6, 6))


# --- statistics ------------------------------------------------------------------------------


def test_batch_norm_without_running_stats_says_why():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ExportError, match="depends on the other samples"):
        freeze_normalization(model, torch.randn(4, 3))


def test_corrupt_running_variance_is_refused():
    model = _randomized(_conv_bn(2, 1, True), 18)
    with torch.no_grad():
        model[1].running_var[0] = -1.0
    with pytest.raises(ExportError, match="negative running statistics"):
        freeze_normalization(model, _input(2))


def test_never_updated_running_statistics_warn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()  # fresh BN
    _, report = freeze_normalization(model, torch.randn(2, 3, 5, 5))
    assert any("never updated" in w for w in report.warnings)


def test_near_zero_variance_negative_gamma_affine_false_and_momentum_none():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=None),
        nn.ReLU(),
        nn.BatchNorm2d(4, affine=False),  # after a nonlinearity: frozen
    )
    _randomized(model, 19)
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([1e-9, 1e-6, 0.0, 3.0]))
        model[1].weight.copy_(torch.tensor([-1.5, 1e-3, -1e-4, 0.5]))
    x = torch.randn(3, 3, 5, 5)
    frozen, report = freeze_normalization(copy.deepcopy(model), x)
    assert report.folded == {"conv2d+bn": 1}
    assert report.frozen_affine == 1
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double())
        got = frozen(x).double()
    # scale reaches |gamma| / sqrt(eps) ~ 500: outputs ~1e3, float32 keeps ~7 digits.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


# --- per-sample norms ------------------------------------------------------------------------


def test_instance_norm_with_running_stats_folds_and_per_sample_norms_stay():
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        nn.ReLU(),
        nn.InstanceNorm2d(6),
        nn.GroupNorm(3, 6),
        nn.LayerNorm([5, 5]),
    )
    _randomized(model, 20)
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(10)
    _, report = _check_equal(model, torch.randn(2, 3, 5, 5))
    assert report.folded == {"conv2d+instancenorm": 1}
    assert report.instance_norm_running_stats_calls == 1
    # Counted per call, by kind: the running-stats InstanceNorm is an affine (folded above).
    assert report.other_norms == {"GroupNorm": 1, "InstanceNorm": 1, "LayerNorm": 1}
