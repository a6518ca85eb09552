"""Fold arithmetic against independent references, with randomized BN statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from export.errors import ExportError
from export.fold import (
    FrozenAffine,
    batch_norm_affine,
    fold_bn_into_conv,
    fold_bn_into_linear,
    freeze_batch_norm,
)

# float32 end to end: conv/linear accumulate in float32, so differences of a few ulps times the
# reduction size are expected; 1e-5 relative with a 1e-5 floor bounds them with room to spare.
RTOL, ATOL = 1e-5, 1e-5


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    """Running stats far from 0/1, gammas of both signs, some tiny: a fresh BN proves nothing."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 3)
        bn.running_var.copy_(torch.rand(c, generator=g) * 5 + 0.05)
        bn.num_batches_tracked.fill_(100)
        if bn.affine:
            gamma = torch.randn(c, generator=g) * 2
            gamma[0] = -abs(gamma[0]) - 0.5  # at least one negative
            gamma[-1] = 1e-3  # and one tiny
            bn.weight.copy_(gamma)
            bn.bias.copy_(torch.randn(c, generator=g))


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


CONVS = [
    (nn.Conv1d, (2, 4, 11)),
    (nn.Conv2d, (2, 4, 9, 7)),
    (nn.Conv3d, (2, 4, 5, 6, 4)),
]


@pytest.mark.parametrize(("conv_cls", "shape"), CONVS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_fold_matches_torch_fusion_and_eager(conv_cls, shape, bias, groups):
    seed = 0
    bn_cls = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
    conv = randomize_(conv_cls(4, 8, 3, padding=1, groups=groups, bias=bias), seed).eval()
    bn = bn_cls[conv_cls](8).eval()
    randomize_bn(bn, seed + 1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))

    fused = fold_bn_into_conv(conv, bn)
    reference = fuse_conv_bn_eval(conv, bn)  # torch's own fold (correct for non-transposed)

    torch.testing.assert_close(fused.weight, reference.weight, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(fused.bias, reference.bias, rtol=RTOL, atol=ATOL)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(conv(x)), rtol=RTOL, atol=ATOL)


def test_linear_fold_matches_torch_fusion_and_eager():
    linear = randomize_(nn.Linear(12, 6), 3).eval()
    bn = nn.BatchNorm1d(6).eval()
    randomize_bn(bn, 4)
    x = torch.randn(5, 12)
    fused = fold_bn_into_linear(linear, bn)
    reference = fuse_linear_bn_eval(linear, bn)
    torch.testing.assert_close(fused.weight, reference.weight, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(fused.bias, reference.bias, rtol=RTOL, atol=ATOL)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(linear(x)), rtol=RTOL, atol=ATOL)


def test_affine_is_computed_in_float64_against_a_hand_reference():
    mean = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float32)
    var = torch.tensor([1e-7, 4.0, 0.5], dtype=torch.float32)
    gamma = torch.tensor([-0.3, 1e-4, 2.0], dtype=torch.float32)
    beta = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float32)
    eps = 1e-5
    scale, shift = batch_norm_affine(mean, var, eps, gamma, beta)
    assert scale.dtype == torch.float64
    for c in range(3):
        expected_scale = float(gamma[c]) / (float(var[c]) + eps) ** 0.5
        assert scale[c].item() == pytest.approx(expected_scale, rel=1e-12)
        assert shift[c].item() == pytest.approx(
            float(beta[c]) - float(mean[c]) * expected_scale, rel=1e-12
        )


def test_affine_false_batch_norm_folds_without_gamma_beta():
    conv = randomize_(nn.Conv2d(3, 5, 1), 5).eval()
    bn = nn.BatchNorm2d(5, affine=False).eval()
    randomize_bn(bn, 6)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            fold_bn_into_conv(conv, bn)(x), bn(conv(x)), rtol=RTOL, atol=ATOL
        )


def test_fold_keeps_dtype_and_leaves_inputs_untouched():
    conv = randomize_(nn.Conv2d(2, 3, 3), 7).eval()
    bn = nn.BatchNorm2d(3).eval()
    randomize_bn(bn, 8)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    fused = fold_bn_into_conv(conv, bn)
    assert fused.weight.dtype == torch.float32
    assert fused is not conv
    for k, v in conv.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_frozen_affine_equals_eval_batch_norm():
    bn = nn.BatchNorm2d(6).eval()
    randomize_bn(bn, 9)
    frozen = freeze_batch_norm(bn, input_rank=4, dtype=torch.float32)
    assert isinstance(frozen, FrozenAffine)
    x = torch.randn(3, 6, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=RTOL, atol=ATOL)


def test_guard_refuses_training_mode_and_missing_running_stats():
    conv = nn.Conv2d(2, 3, 3).eval()
    trained_bn = nn.BatchNorm2d(3)  # train mode
    with pytest.raises(ExportError, match="training mode"):
        fold_bn_into_conv(conv, trained_bn)
    no_stats = nn.BatchNorm2d(3, track_running_stats=False).eval()
    with pytest.raises(ExportError, match="track_running_stats=False"):
        fold_bn_into_conv(conv, no_stats)
