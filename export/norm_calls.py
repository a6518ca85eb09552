"""Counting the per-sample normalization calls a model makes: LayerNorm, GroupNorm,
InstanceNorm (with per-sample statistics) and RMSNorm, module or functional.

They cannot be folded (each sample is normalized by its own statistics) and stay ONNX ops;
``model.json`` reports how many the model calls. Counted by running the model once, not by
reading modules or the traced graph: a module called in a loop is several calls, and in eval
mode without gradients PyTorch's Transformer layers take a fused fast path whose layer norms
no module or graph node shows (nn.TransformerEncoder's 5 LayerNorms were counted as 1). The
count runs on a copy with gradients on, which turns that fast path off.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["count_norm_calls"]

_KINDS: dict[Callable[..., Any], str] = {
    nn.functional.layer_norm: "LayerNorm",
    nn.functional.group_norm: "GroupNorm",
    nn.functional.instance_norm: "InstanceNorm",
    nn.functional.rms_norm: "RMSNorm",
}


class _Count(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        kind = _KINDS.get(func)
        # An InstanceNorm with running statistics in eval mode is an affine: it is folded or
        # frozen like a BatchNorm, not kept as a per-sample norm.
        per_sample = kwargs.get("use_input_stats", args[5] if len(args) > 5 else True)
        if kind is not None and (kind != "InstanceNorm" or per_sample):
            self.calls[kind] += 1
        return func(*args, **kwargs)


def count_norm_calls(model: nn.Module, samples: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Calls of each per-sample norm in one forward pass of ``model`` (not modified)."""
    probe = copy.deepcopy(model).eval()
    for parameter in probe.parameters():
        if parameter.is_floating_point():
            parameter.requires_grad_(True)
    counter = _Count()
    with torch.enable_grad(), counter:
        probe(*samples)
    return dict(sorted(counter.calls.items()))
