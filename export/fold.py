"""Batch-norm folding: pure tensor arithmetic, and guarded module wrappers around it.

Eval-mode BatchNorm is the per-channel affine ``y = x * s + t`` with

    s = gamma / sqrt(running_var + eps)        t = beta - running_mean * s

(``gamma = 1``, ``beta = 0`` when ``affine=False``). Folding it into the producer that precedes
it scales that producer's output channels by ``s`` and shifts its bias. The arithmetic is done in
float64 and cast back to the producer's dtype, so near-zero variances and tiny or negative gammas
lose nothing to float32 rounding before the final cast.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from export.errors import ExportError

__all__ = [
    "FrozenAffine",
    "batch_norm_affine",
    "fold_bn_into_conv",
    "fold_bn_into_linear",
    "fold_conv_bn_weights",
    "fold_linear_bn_weights",
    "freeze_batch_norm",
]

_BatchNorm = nn.modules.batchnorm._BatchNorm
_Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d


def batch_norm_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``(scale, shift)``, each (C,) float64."""
    mean = running_mean.detach().to(torch.float64)
    var = running_var.detach().to(torch.float64)
    scale = torch.rsqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma.detach().to(torch.float64)
    shift = -mean * scale
    if beta is not None:
        shift = shift + beta.detach().to(torch.float64)
    return scale, shift


def fold_conv_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel affine into a (non-transposed) conv.

    weight: (C_out, C_in / groups, *kernel) — output channels on axis 0, any groups.
    bias: (C_out,) or None. scale, shift: (C_out,) float64.
    Returns the new weight and bias in ``weight.dtype``.
    """
    if weight.shape[0] != scale.shape[0]:
        raise ValueError(f"conv has {weight.shape[0]} output channels, BN has {scale.shape[0]}")
    w64 = weight.detach().to(torch.float64)
    b64 = (
        bias.detach().to(torch.float64)
        if bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64)
    )
    view = (-1,) + (1,) * (weight.dim() - 1)
    new_w = w64 * scale.reshape(view)
    new_b = b64 * scale + shift
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def fold_linear_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-feature affine into a Linear. weight: (out, in); bias, scale, shift: (out,)."""
    return fold_conv_bn_weights(weight, bias, scale, shift)


def _check_foldable(bn: _BatchNorm) -> None:
    if bn.training:
        raise ExportError(f"{type(bn).__name__} is in training mode; fold only an eval() copy")
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ExportError(
            f"{type(bn).__name__} has track_running_stats=False: its eval output depends on the "
            "batch, so it cannot be frozen into constants"
        )


def _bn_scale_shift(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    _check_foldable(bn)
    assert bn.running_mean is not None
    assert bn.running_var is not None
    return batch_norm_affine(
        bn.running_mean,
        bn.running_var,
        bn.eps,
        bn.weight if bn.affine else None,
        bn.bias if bn.affine else None,
    )


def fold_bn_into_conv(conv: _Conv, bn: _BatchNorm) -> _Conv:
    """A new conv equal to ``bn(conv(x))`` in eval mode; ``conv`` and ``bn`` are untouched."""
    if conv.training:
        raise ExportError("conv is in training mode; fold only an eval() copy")
    scale, shift = _bn_scale_shift(bn)
    fused = copy.deepcopy(conv)
    weight, bias = fold_conv_bn_weights(conv.weight, conv.bias, scale, shift)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fold_bn_into_linear(linear: nn.Linear, bn: _BatchNorm) -> nn.Linear:
    """A new Linear equal to ``bn(linear(x))`` for (N, C) inputs in eval mode."""
    if linear.training:
        raise ExportError("linear is in training mode; fold only an eval() copy")
    scale, shift = _bn_scale_shift(bn)
    fused = copy.deepcopy(linear)
    weight, bias = fold_linear_bn_weights(linear.weight, linear.bias, scale, shift)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


class FrozenAffine(nn.Module):
    """Eval-mode BatchNorm as constants: ``x * scale + shift`` over channel axis 1."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, spatial_dims: int) -> None:
        super().__init__()
        view = (1, -1) + (1,) * spatial_dims
        self.register_buffer("scale", scale.reshape(view))
        self.register_buffer("shift", shift.reshape(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def freeze_batch_norm(bn: _BatchNorm, input_rank: int, dtype: torch.dtype) -> FrozenAffine:
    """A BN that has no producer to fold into, as a constant per-channel affine."""
    scale, shift = _bn_scale_shift(bn)
    return FrozenAffine(scale.to(dtype), shift.to(dtype), spatial_dims=max(input_rank - 2, 0))
