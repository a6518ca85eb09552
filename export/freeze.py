"""Rewrite a model so that no BatchNorm remains: fold where exact, freeze the rest.

The model is traced with ``torch.fx`` and shapes are propagated with a sample input, so the
decision for each BatchNorm call is made on the graph, not on module order:

- the producer is a Conv1d/2d/3d, or a Linear whose output is (N, C), called at exactly one
  place and whose output has no other consumer → fold into it;
- anything else (a nonlinearity between, a residual branch, a Linear on (N, C, L), a BN on the
  input, a BN module called twice) → a constant per-channel affine.

The input model is never mutated: the caller passes a deep copy in eval mode.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from export.errors import ExportError
from export.fold import fold_bn_into_conv, fold_bn_into_linear, freeze_batch_norm

__all__ = ["FreezeReport", "freeze_normalization"]

_BatchNorm = nn.modules.batchnorm._BatchNorm
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class FreezeReport:
    """What happened to every normalization layer."""

    folded: dict[str, int] = field(default_factory=dict)  # pattern → count, e.g. "conv2d+bn"
    frozen_affine: int = 0
    batch_norm_calls: int = 0
    other_norms: dict[str, int] = field(default_factory=dict)  # kept as ONNX ops
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "batch_norm_calls": self.batch_norm_calls,
            "folded": dict(self.folded),
            "folded_total": sum(self.folded.values()),
            "frozen_affine": self.frozen_affine,
            "other_norms": dict(self.other_norms),
            "warnings": list(self.warnings),
        }


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"cannot trace {type(model).__name__} with torch.fx: {first}") from exc


def _fresh_name(gm: fx.GraphModule, stem: str) -> str:
    existing = dict(gm.named_modules())
    for i in itertools.count():
        name = f"{stem}_{i}"
        if name not in existing:
            return name
    raise AssertionError("unreachable")


def _rank(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ExportError(f"no shape for {node.name}: the model output is not a plain tensor")
    return len(meta.shape)


def _foldable_producer(
    gm: fx.GraphModule, bn_node: fx.Node, call_counts: Counter[str]
) -> tuple[fx.Node, nn.Module] | None:
    producer = bn_node.args[0] if bn_node.args else None
    if not isinstance(producer, fx.Node) or producer.op != "call_module":
        return None
    if len(producer.users) != 1 or call_counts[str(producer.target)] != 1:
        return None  # another consumer sees the unnormalized output, or the layer is reused
    module = gm.get_submodule(str(producer.target))
    if isinstance(module, _CONVS):
        return producer, module
    if isinstance(module, nn.Linear) and _rank(producer) == 2:
        return producer, module
    return None


def _check_bn(bn: _BatchNorm, name: str, report: FreezeReport) -> None:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ExportError(
            f"BatchNorm {name!r} has track_running_stats=False: in eval mode it normalizes with "
            "the statistics of each batch, so its output cannot be frozen into constants"
        )
    tracked = getattr(bn, "num_batches_tracked", None)
    if tracked is not None and int(tracked) == 0:
        report.warnings.append(f"BatchNorm {name!r}: running statistics were never updated")


def freeze_normalization(
    model: nn.Module, sample: torch.Tensor, *, fold: bool = True
) -> tuple[nn.Module, FreezeReport]:
    """Return an eval-mode module with every BatchNorm folded or frozen, and what was done.

    ``fold=False`` freezes every BatchNorm as an affine without folding (``--no-fold``): the
    graph still holds no BatchNormalization node, only extra Mul/Add.

    ``model`` must already be an eval-mode copy owned by the caller; its layers are not
    modified (folds create new modules), but the returned module shares untouched layers.
    """
    if model.training:
        raise ExportError("freeze_normalization needs an eval-mode model")
    gm = _trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(sample)
    report = FreezeReport()
    call_counts = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        if isinstance(module, _OTHER_NORMS):
            kind = type(module).__name__
            report.other_norms[kind] = report.other_norms.get(kind, 0) + 1
            continue
        if not isinstance(module, _BatchNorm):
            continue
        report.batch_norm_calls += 1
        _check_bn(module, str(node.target), report)
        found = _foldable_producer(gm, node, call_counts) if fold else None
        if found is not None:
            producer, layer = found
            if isinstance(layer, nn.Linear):
                fused: nn.Module = fold_bn_into_linear(layer, module)
                pattern = "linear+bn"
            else:
                fused = fold_bn_into_conv(layer, module)
                pattern = f"{type(layer).__name__.lower()}+bn"
            name = _fresh_name(gm, "folded")
            gm.add_submodule(name, fused)
            producer.target = name
            node.replace_all_uses_with(producer)
            gm.graph.erase_node(node)
            report.folded[pattern] = report.folded.get(pattern, 0) + 1
        else:
            dtype = node.meta["tensor_meta"].dtype
            frozen = freeze_batch_norm(module, _rank(node), dtype)
            name = _fresh_name(gm, "frozen_bn")
            gm.add_submodule(name, frozen)
            node.target = name
            report.frozen_affine += 1

    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.eval()
    return gm, report
