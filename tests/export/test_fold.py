"""Fold arithmetic against independent references, with randomized BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from normserve.export.errors import ExportError
from normserve.export.fold import (
    FrozenAffine,
    batch_norm_affine,
    fold_bn_into_conv,
    fold_bn_into_conv_transpose,
    fold_bn_into_following_conv,
    fold_bn_into_following_linear,
    fold_bn_into_linear,
    fold_conv_bn_weights,
    fold_conv_transpose_bn_weights,
    fold_following_conv_weights,
    freeze_batch_norm,
    norm_affine,
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
    frozen = freeze_batch_norm(bn, dtype=torch.float32)
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


# --- transposed convs: output channels are weight axis 1, per group -------------------------

TRANSPOSED = [
    (nn.ConvTranspose1d, nn.BatchNorm1d, (2, 4, 7)),
    (nn.ConvTranspose2d, nn.BatchNorm2d, (2, 4, 5, 6)),
    (nn.ConvTranspose3d, nn.BatchNorm3d, (2, 4, 3, 4, 3)),
]


@pytest.mark.parametrize(("conv_cls", "bn_cls", "shape"), TRANSPOSED)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_conv_transpose_fold_matches_eager(conv_cls, bn_cls, shape, bias, groups):
    # Checked against eager, not torch.nn.utils.fusion, which assumes weight axis 1 holds every
    # output channel: true only for groups=1.
    conv = conv_cls(4, 8, 3, stride=2, padding=1, output_padding=1, groups=groups, bias=bias)
    randomize_(conv, 11).eval()
    bn = bn_cls(8).eval()
    randomize_bn(bn, 12)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(13))
    fused = fold_bn_into_conv_transpose(conv, bn)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(conv(x)), rtol=RTOL, atol=ATOL)
    assert fused.groups == groups
    assert fused.weight.shape == conv.weight.shape


def test_conv_transpose_groups_scale_columns_within_each_group():
    # weight (C_in=4, C_out/groups=1, k) with groups=4: output channel g is column 0 of rows g.
    conv = nn.ConvTranspose1d(4, 4, 1, groups=4, bias=False).eval()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    weight, bias = fold_conv_transpose_bn_weights(
        conv.weight, None, scale, torch.zeros(4, dtype=torch.float64), groups=4
    )
    assert weight.flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert bias.tolist() == [0.0, 0.0, 0.0, 0.0]


# --- BN before a conv / linear: scale the consumer's input channels -------------------------

FOLLOWING = [
    (nn.Conv1d, nn.BatchNorm1d, (2, 4, 11)),
    (nn.Conv2d, nn.BatchNorm2d, (2, 4, 9, 7)),
    (nn.Conv3d, nn.BatchNorm3d, (2, 4, 5, 6, 5)),
]


@pytest.mark.parametrize(("conv_cls", "bn_cls", "shape"), FOLLOWING)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_bn_folds_into_following_conv_without_padding(conv_cls, bn_cls, shape, bias, groups):
    bn = bn_cls(4).eval()
    randomize_bn(bn, 21)
    conv = conv_cls(4, 8, 3, stride=2, dilation=1 + (groups == 2), groups=groups, bias=bias)
    randomize_(conv, 22).eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(23))
    fused = fold_bn_into_following_conv(bn, conv)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), conv(bn(x)), rtol=RTOL, atol=ATOL)


def test_bn_folds_into_following_conv_with_reflect_padding():
    # Reflect padding copies already-normalized values, so the fold stays exact.
    bn = nn.BatchNorm2d(3).eval()
    randomize_bn(bn, 24)
    conv = randomize_(nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"), 25).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            fold_bn_into_following_conv(bn, conv)(x), conv(bn(x)), rtol=RTOL, atol=ATOL
        )


def test_bn_into_following_conv_with_zero_padding_is_refused_because_inexact():
    bn = nn.BatchNorm2d(3).eval()
    randomize_bn(bn, 26)
    conv = randomize_(nn.Conv2d(3, 5, 3, padding=1), 27).eval()
    with pytest.raises(ExportError, match="pads with zeros"):
        fold_bn_into_following_conv(bn, conv)
    # ...and it really would be wrong: the naive fold differs from eager at the border.
    weight, bias = fold_following_conv_weights(conv.weight, conv.bias, *norm_affine(bn), 1)
    naive = nn.Conv2d(3, 5, 3, padding=1).eval()
    with torch.no_grad():
        naive.weight.copy_(weight)
        naive.bias.copy_(bias)
        x = torch.randn(2, 3, 6, 6)
        assert not torch.allclose(naive(x), conv(bn(x)), rtol=1e-3, atol=1e-3)


def test_bn_folds_into_following_linear():
    bn = nn.BatchNorm1d(6).eval()
    randomize_bn(bn, 28)
    linear = randomize_(nn.Linear(6, 3), 29).eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            fold_bn_into_following_linear(bn, linear)(x), linear(bn(x)), rtol=RTOL, atol=ATOL
        )


# --- statistics: float64 arithmetic, odd BN configurations ----------------------------------


def test_fold_is_float64_then_cast_bit_for_bit():
    # Near-zero variances and large means: float32 arithmetic rounds the shift differently.
    g = torch.Generator().manual_seed(30)
    weight = torch.randn(64, 16, 3, 3, generator=g)
    bias = torch.randn(64, generator=g)
    mean = torch.randn(64, generator=g) * 1e3
    var = torch.rand(64, generator=g) * 1e-6
    gamma = torch.randn(64, generator=g) * 3
    beta = torch.randn(64, generator=g)
    eps = 1e-5
    scale, shift = batch_norm_affine(mean, var, eps, gamma, beta)
    new_w, new_b = fold_conv_bn_weights(weight, bias, scale, shift)

    s64 = gamma.double() / torch.sqrt(var.double() + eps)
    expected_w = (weight.double() * s64.reshape(-1, 1, 1, 1)).float()
    expected_b = (bias.double() * s64 + beta.double() - mean.double() * s64).float()
    assert torch.equal(new_w, expected_w)
    assert torch.equal(new_b, expected_b)
    # The same fold in float32 does not produce these bits: the test can tell them apart.
    s32 = gamma / torch.sqrt(var + eps)
    naive_b = bias * s32 + (beta - mean * s32)
    assert not torch.equal(naive_b, expected_b)


@pytest.mark.parametrize(
    "bn",
    [
        nn.BatchNorm2d(6, momentum=None),  # cumulative average: same eval function
        nn.BatchNorm2d(6, affine=False),
        nn.BatchNorm2d(6, eps=1e-3),
    ],
    ids=["momentum-none", "affine-false", "eps-1e-3"],
)
def test_fold_of_bn_variants_matches_eager(bn):
    conv = randomize_(nn.Conv2d(3, 6, 3), 31).eval()
    bn.train()
    with torch.no_grad():  # real running statistics from a few training batches
        for i in range(3):
            bn(conv(torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(i)) * 2 + 1))
    bn.eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(
            fold_bn_into_conv(conv, bn)(x), bn(conv(x)), rtol=RTOL, atol=ATOL
        )


def test_near_zero_variance_and_negative_gamma_fold_against_float64_eager():
    conv = randomize_(nn.Conv2d(3, 4, 3), 32).eval()
    bn = nn.BatchNorm2d(4, eps=1e-8).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([1e-9, 0.0, 2.5, 1e-7]))
        bn.weight.copy_(torch.tensor([-0.7, 1e-4, -2.0, 0.3]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = torch.randn(2, 3, 5, 5)
    fused = fold_bn_into_conv(conv, bn)
    with torch.no_grad():
        expected = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)).double()(x.double())
        got = fused(x).double()
    # Outputs reach ~1e4 (scale = gamma / sqrt(1e-8)); float32 keeps ~7 significant digits.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


def test_instance_norm_with_running_stats_is_an_affine_that_folds():
    conv = randomize_(nn.Conv2d(3, 4, 3), 33).eval()
    norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.3, -0.2, 1.0, 0.0]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0, 0.1, 1.5]))
        norm.weight.copy_(torch.tensor([1.5, -0.5, 0.7, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4]))
    norm.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            fold_bn_into_conv(conv, norm)(x), norm(conv(x)), rtol=RTOL, atol=ATOL
        )


@pytest.mark.parametrize("shape", [(5, 6), (5, 6, 7)])
def test_frozen_affine_handles_any_rank(shape):
    bn = nn.BatchNorm1d(6).eval()
    randomize_bn(bn, 34)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(freeze_batch_norm(bn)(x), bn(x), rtol=RTOL, atol=ATOL)
