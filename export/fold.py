"""Batch-norm folding: pure tensor arithmetic, and guarded module wrappers around it.

Eval-mode BatchNorm is the per-channel affine ``y = x * s + t`` with

    s = gamma / sqrt(running_var + eps)        t = beta - running_mean * s

(``gamma = 1``, ``beta = 0`` when ``affine=False``). An InstanceNorm that tracks running
statistics is the same affine in eval mode. Folding it

- into the producer before it scales the producer's output channels by ``s`` and shifts its bias:
  a conv's output channels are weight axis 0; a transposed conv's are weight axis 1 *within each
  group* (weight is ``(C_in, C_out / groups, *k)``); a Linear's are weight axis 0;
- into the consumer after it (a conv or Linear reading only the BN's output) scales the
  consumer's *input* channels by ``s`` and adds ``W · t`` to its bias. For a conv this is exact
  only when every output position sees a full window of affine-transformed values: no zero
  padding (reflect/replicate/circular padding copies transformed values, so it commutes).

The arithmetic is done in float64 and cast back to the layer's dtype, so near-zero variances and
tiny or negative gammas lose nothing to float32 rounding before the final cast.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from normserve.export.errors import ExportError

__all__ = [
    "FrozenAffine",
    "batch_norm_affine",
    "fold_bn_into_conv",
    "fold_bn_into_conv_transpose",
    "fold_bn_into_following_conv",
    "fold_bn_into_following_linear",
    "fold_bn_into_linear",
    "fold_conv_bn_weights",
    "fold_conv_transpose_bn_weights",
    "fold_following_conv_weights",
    "fold_following_linear_weights",
    "fold_linear_bn_weights",
    "freeze_batch_norm",
    "norm_affine",
    "pads_with_zeros",
]

_BatchNorm = nn.modules.batchnorm._BatchNorm
_InstanceNorm = nn.modules.instancenorm._InstanceNorm
_Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d
_ConvTranspose = nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d
StatNorm = _BatchNorm | _InstanceNorm


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


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _bias64(bias: torch.Tensor | None, n: int) -> torch.Tensor:
    return _f64(bias) if bias is not None else torch.zeros(n, dtype=torch.float64)


def fold_conv_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel affine applied after a (non-transposed) conv.

    weight: (C_out, C_in / groups, *kernel) — output channels on axis 0, any groups.
    bias: (C_out,) or None. scale, shift: (C_out,) float64.
    Returns the new weight and bias in ``weight.dtype``.
    """
    if weight.shape[0] != scale.shape[0]:
        raise ValueError(f"conv has {weight.shape[0]} output channels, BN has {scale.shape[0]}")
    view = (-1,) + (1,) * (weight.dim() - 1)
    new_w = _f64(weight) * scale.reshape(view)
    new_b = _bias64(bias, weight.shape[0]) * scale + shift
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def fold_conv_transpose_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel affine applied after a transposed conv.

    weight: (C_in, C_out / groups, *kernel). Input channels ``g * C_in/groups ...`` feed output
    channels ``g * C_out/groups + j`` through ``weight[:, j]``, so output channel
    ``g * C_out/groups + j`` is scaled in the rows of group g, column j.
    bias: (C_out,) or None. scale, shift: (C_out,) float64.
    """
    c_in, c_out_g, *kernel = weight.shape
    c_out = c_out_g * groups
    if c_in % groups or scale.shape[0] != c_out:
        raise ValueError(
            f"transposed conv weight {tuple(weight.shape)} with groups={groups} does not have "
            f"{scale.shape[0]} output channels"
        )
    w = _f64(weight).reshape(groups, c_in // groups, c_out_g, *kernel)
    s = scale.reshape(groups, 1, c_out_g, *([1] * len(kernel)))
    new_w = (w * s).reshape(weight.shape)
    new_b = _bias64(bias, c_out) * scale + shift
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def fold_linear_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-feature affine after a Linear. weight: (out, in); bias, scale, shift: (out,)."""
    return fold_conv_bn_weights(weight, bias, scale, shift)


def fold_following_conv_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel affine applied *before* a conv without zero padding.

    ``conv(x * s + t)``: output channel o of group g reads input channels
    ``g * C_in/groups + i`` through ``weight[o, i]``, so
    ``weight'[o, i] = weight[o, i] * s[g*C_in/groups + i]`` and
    ``bias'[o] = bias[o] + sum_{i,k} weight[o, i, k] * t[g*C_in/groups + i]``.
    weight: (C_out, C_in / groups, *kernel); scale, shift: (C_in,) float64.
    """
    c_out, c_in_g, *kernel = weight.shape
    if c_out % groups or scale.shape[0] != c_in_g * groups:
        raise ValueError(
            f"conv weight {tuple(weight.shape)} with groups={groups} does not read "
            f"{scale.shape[0]} input channels"
        )
    c_out_g = c_out // groups
    per_weight = lambda v: (  # noqa: E731  (C_in,) → (C_out, C_in/groups), grouped-aware
        v.reshape(groups, 1, c_in_g).expand(groups, c_out_g, c_in_g).reshape(c_out, c_in_g)
    )
    w = _f64(weight)
    s = per_weight(scale).reshape(c_out, c_in_g, *([1] * len(kernel)))
    new_w = w * s
    kernel_sums = w.sum(dim=tuple(range(2, w.dim()))) if kernel else w  # (C_out, C_in/groups)
    new_b = _bias64(bias, c_out) + (kernel_sums * per_weight(shift)).sum(dim=1)
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def fold_following_linear_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear(x * s + t)`` on (N, in): ``W' = W diag(s)``, ``b' = b + W t``."""
    if weight.shape[1] != scale.shape[0]:
        raise ValueError(f"linear reads {weight.shape[1]} features, BN has {scale.shape[0]}")
    w = _f64(weight)
    new_w = w * scale.reshape(1, -1)
    new_b = _bias64(bias, weight.shape[0]) + w @ shift
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


def pads_with_zeros(conv: _Conv) -> bool:
    """True when the conv pads its input with zeros anywhere (padding > 0, mode 'zeros')."""
    padded = any(p != 0 for p in conv._reversed_padding_repeated_twice)
    return padded and conv.padding_mode == "zeros"


def _check_norm(norm: StatNorm) -> None:
    kind = type(norm).__name__
    if norm.training:
        raise ExportError(f"{kind} is in training mode; fold only an eval() copy")
    if norm.running_mean is None or norm.running_var is None:
        raise ExportError(
            f"{kind} has track_running_stats=False: its eval output depends on the batch, so it "
            "cannot be frozen into constants"
        )
    if isinstance(norm, _InstanceNorm) and not norm.track_running_stats:
        raise ExportError(f"{kind} normalizes with per-sample statistics; it is no affine")


def norm_affine(norm: StatNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode per-channel ``(scale, shift)`` of a BN (or running-stats InstanceNorm)."""
    _check_norm(norm)
    assert norm.running_mean is not None
    assert norm.running_var is not None
    return batch_norm_affine(
        norm.running_mean,
        norm.running_var,
        norm.eps,
        norm.weight if norm.affine else None,
        norm.bias if norm.affine else None,
    )


def _with(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A copy of ``layer`` with its own (cloned, not shared) weight and bias."""
    if layer.training:
        raise ExportError(f"{type(layer).__name__} is in training mode; fold only an eval() copy")
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def fold_bn_into_conv(conv: _Conv, bn: StatNorm) -> _Conv:
    """A new conv equal to ``bn(conv(x))`` in eval mode; ``conv`` and ``bn`` are untouched."""
    scale, shift = norm_affine(bn)
    return _with(conv, *fold_conv_bn_weights(conv.weight, conv.bias, scale, shift))  # type: ignore[return-value]


def fold_bn_into_conv_transpose(conv: _ConvTranspose, bn: StatNorm) -> _ConvTranspose:
    """A new transposed conv equal to ``bn(conv(x))`` in eval mode, any groups."""
    scale, shift = norm_affine(bn)
    weight, bias = fold_conv_transpose_bn_weights(conv.weight, conv.bias, scale, shift, conv.groups)
    return _with(conv, weight, bias)  # type: ignore[return-value]


def fold_bn_into_linear(linear: nn.Linear, bn: StatNorm) -> nn.Linear:
    """A new Linear equal to ``bn(linear(x))`` for (N, C) inputs in eval mode."""
    scale, shift = norm_affine(bn)
    return _with(linear, *fold_linear_bn_weights(linear.weight, linear.bias, scale, shift))  # type: ignore[return-value]


def fold_bn_into_following_conv(bn: StatNorm, conv: _Conv) -> _Conv:
    """A new conv equal to ``conv(bn(x))`` in eval mode; refuses zero padding (not exact)."""
    if pads_with_zeros(conv):
        raise ExportError(
            "cannot fold a BatchNorm into a following conv that pads with zeros: the padded "
            "border would not be shifted"
        )
    scale, shift = norm_affine(bn)
    weight, bias = fold_following_conv_weights(conv.weight, conv.bias, scale, shift, conv.groups)
    return _with(conv, weight, bias)  # type: ignore[return-value]


def fold_bn_into_following_linear(bn: StatNorm, linear: nn.Linear) -> nn.Linear:
    """A new Linear equal to ``linear(bn(x))`` for (N, C) inputs in eval mode."""
    scale, shift = norm_affine(bn)
    weight, bias = fold_following_linear_weights(linear.weight, linear.bias, scale, shift)
    return _with(linear, weight, bias)  # type: ignore[return-value]


class FrozenAffine(nn.Module):
    """Eval-mode BatchNorm as constants: ``x * scale + shift`` over channel axis 1, any rank.

    scale, shift: (C,). Input (N, C, *spatial) → same shape.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(-1).clone())
        self.register_buffer("shift", shift.detach().reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(view) + self.shift.reshape(view)


def freeze_batch_norm(bn: StatNorm, dtype: torch.dtype = torch.float32) -> FrozenAffine:
    """A BN that has nothing to fold into, as a constant per-channel affine in ``dtype``."""
    scale, shift = norm_affine(bn)
    return FrozenAffine(scale.to(dtype), shift.to(dtype))
