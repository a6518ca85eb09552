"""Graph-level folding decisions: what folds, what is frozen, and equality with eager."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from export.errors import ExportError
from export.fold import FrozenAffine
from export.freeze import freeze_normalization
from models.registry import build_model
from tests.export.test_fold import randomize_, randomize_bn

# float32 through up to four layers of randomized weights (outputs reach |y| ~ 10, reductions over
# up to 512 terms): folding reorders the rounding, so ~1e-5 relative differences are expected.
RTOL, ATOL = 1e-4, 1e-4


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
