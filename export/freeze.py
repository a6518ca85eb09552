"""Rewrite a model so that no BatchNorm remains: fold where exact, freeze the rest.

Over 300 lines because the decision for every BatchNorm call is one walk over one graph.

The model is traced with ``torch.fx`` and shapes are propagated with a sample input, so the
decision for each BatchNorm *call* is made on the graph, not on module order. For every call of a
BatchNorm (or of an InstanceNorm that tracks running statistics, which is the same affine in eval
mode), in graph order:

1. fold into the producer before it when the producer is a standard Conv1d/2d/3d,
   ConvTranspose1d/2d/3d (any groups) or a Linear whose output is (N, C); called at exactly one
   place; and whose output has no other consumer;
2. else fold into the consumer after it when the BN's output feeds only a standard Conv that does
   not pad with zeros, or a Linear on (N, C), called at exactly one place;
3. else freeze it as a constant per-channel affine (``FrozenAffine``): a nonlinearity between, a
   residual branch, a Linear on (N, C, L), a BN on the input, a reused layer, zero padding.

``F.batch_norm`` called with module buffers (a hand-written norm layer) is frozen too. A BN that
normalizes with batch statistics in eval mode is refused. When ``torch.fx`` cannot trace the
model, every standard BatchNorm module is frozen in place and none is folded (the ONNX exporter
itself traces more Python than fx does).

The input model is never mutated when tracing works; the caller passes a deep copy either way.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from normserve.errors import first_line
from normserve.export.errors import ExportError
from normserve.export.fold import (
    FrozenAffine,
    batch_norm_affine,
    fold_bn_into_conv,
    fold_bn_into_conv_transpose,
    fold_bn_into_following_conv,
    fold_bn_into_following_linear,
    fold_bn_into_linear,
    freeze_batch_norm,
    pads_with_zeros,
)
from normserve.export.norm_calls import count_norm_calls

__all__ = ["Decision", "FreezeReport", "freeze_normalization", "is_standard"]

_BatchNorm = nn.modules.batchnorm._BatchNorm
_InstanceNorm = nn.modules.instancenorm._InstanceNorm
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PER_SAMPLE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, _InstanceNorm)
_LEAVES = (*_CONVS, *_CONV_TRANSPOSES, nn.Linear, _BatchNorm, *_PER_SAMPLE_NORMS)


@dataclass(frozen=True)
class Decision:
    """What happened to one BatchNorm call, and why."""

    layer: str
    kind: str
    action: str  # "folded" or "frozen"
    pattern: str | None = None  # e.g. "conv2d+bn" (folded into the layer before) or "bn+conv2d"
    into: str | None = None
    reason: str | None = None  # why it was frozen rather than folded

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class FreezeReport:
    """What happened to every normalization layer."""

    folded: dict[str, int] = field(default_factory=dict)  # pattern → count, e.g. "conv2d+bn"
    frozen_affine: int = 0
    batch_norm_calls: int = 0
    instance_norm_running_stats_calls: int = 0
    other_norms: dict[str, int] = field(default_factory=dict)  # per-sample norm calls: ONNX ops
    decisions: list[Decision] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    traced: bool = True

    def to_dict(self) -> dict[str, object]:
        return {
            "batch_norm_calls": self.batch_norm_calls,
            "instance_norm_running_stats_calls": self.instance_norm_running_stats_calls,
            "folded": dict(sorted(self.folded.items())),
            "folded_total": sum(self.folded.values()),
            "frozen_affine": self.frozen_affine,
            "other_norms": dict(sorted(self.other_norms.items())),
            "traced_with_fx": self.traced,
            "decisions": [d.to_dict() for d in self.decisions],
            "warnings": list(self.warnings),
        }

    def _fold(self, decision: Decision) -> None:
        assert decision.pattern is not None
        self.folded[decision.pattern] = self.folded.get(decision.pattern, 0) + 1
        self.decisions.append(decision)

    def _freeze(self, decision: Decision) -> None:
        self.frozen_affine += 1
        self.decisions.append(decision)


def is_standard(module: nn.Module) -> bool:
    """True when ``module`` computes what its torch.nn base class computes.

    A subclass that overrides ``forward`` (say, a weight-standardized conv), a module with hooks,
    or one with parametrized weights may compute something else: never fold into it.
    """
    base = next((c for c in type(module).__mro__ if c.__module__.startswith("torch.nn.")), None)
    if base is None or not isinstance(module, _LEAVES):
        return False
    for name in ("forward", "_conv_forward", "_check_input_dim"):
        if getattr(type(module), name, None) is not getattr(base, name, None):
            return False
    if parametrize.is_parametrized(module):
        return False
    hooks = (module._forward_hooks, module._forward_pre_hooks)
    return not any(hooks)


class _Tracer(fx.Tracer):
    """Keeps every standard conv, linear and norm layer (subclasses included) as one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _LEAVES) and is_standard(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    graph = _Tracer().trace(model)
    return fx.GraphModule(model, graph, type(model).__name__)


def _fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    if not isinstance(obj, torch.Tensor):
        raise ExportError(f"{target} is not a tensor")
    return obj


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
        raise ExportError(f"no shape for {node.name}: its value is not a plain tensor")
    return len(meta.shape)


def _stat_norm_kind(module: nn.Module, name: str) -> str | None:
    """'bn' for a BatchNorm, 'instancenorm' for an InstanceNorm that uses running stats in eval.

    Raises for a BatchNorm whose eval output depends on the batch.
    """
    if isinstance(module, _BatchNorm):
        if module.running_mean is None or module.running_var is None:
            raise ExportError(
                f"BatchNorm {name!r} has track_running_stats=False: in eval mode it normalizes "
                "with the statistics of each batch, so its output depends on the other samples "
                "and cannot be frozen into constants; train it with track_running_stats=True"
            )
        return "bn"
    if (
        isinstance(module, _InstanceNorm)
        and module.track_running_stats
        and module.running_mean is not None
    ):
        return "instancenorm"
    return None


def _check_statistics(module: nn.Module, name: str, report: FreezeReport) -> None:
    mean, var = module.running_mean, module.running_var
    assert isinstance(mean, torch.Tensor)
    assert isinstance(var, torch.Tensor)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()) or (var < 0).any():
        raise ExportError(
            f"{type(module).__name__} {name!r} has non-finite or negative running statistics: "
            "the checkpoint is corrupt"
        )
    # The statistics themselves say whether they were updated: num_batches_tracked does not,
    # since a checkpoint saved without it (older PyTorch) loads it as 0.
    if bool((mean == 0).all()) and bool((var == 1).all()):
        warning = (
            f"{type(module).__name__} {name!r}: running statistics were never updated "
            "(mean 0, variance 1): was the model trained?"
        )
        if warning not in report.warnings:  # a layer called twice warns once
            report.warnings.append(warning)


def _input_of(node: fx.Node) -> fx.Node:
    arg = node.args[0] if node.args else next(iter(node.kwargs.values()), None)
    if not isinstance(arg, fx.Node):
        raise ExportError(f"{node.name} is not called on a tensor")
    return arg


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "placeholder":
        return "the model input"
    if node.op == "call_module":
        return f"{type(gm.get_submodule(str(node.target))).__name__} {str(node.target)!r}"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', node.target)}()"
    if node.op == "call_method":
        return f".{node.target}()"
    return node.name


def _kind_token(module: nn.Module) -> str:
    return type(module).__name__.lower()


class _Rewriter:
    """One pass over the graph, deciding and rewriting each BatchNorm call."""

    def __init__(self, gm: fx.GraphModule, report: FreezeReport, fold: bool) -> None:
        self.gm = gm
        self.report = report
        self.fold = fold
        self.calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def install(self, node: fx.Node, stem: str, module: nn.Module) -> str:
        name = _fresh_name(self.gm, stem)
        self.gm.add_submodule(name, module)
        node.target = name
        self.calls[name] += 1
        return name

    def producer(self, node: fx.Node) -> tuple[fx.Node, nn.Module] | str:
        """The layer to fold into (before the BN), or why there is none."""
        source = _input_of(node)
        if source.op != "call_module":
            return f"its input comes from {_describe(source, self.gm)}, not a conv or linear"
        layer = self.module(source)
        if not isinstance(layer, (*_CONVS, *_CONV_TRANSPOSES, nn.Linear)):
            return f"its input comes from {_describe(source, self.gm)}, not a conv or linear"
        if not is_standard(layer):
            return f"{_describe(source, self.gm)} is customized (forward, hooks or parametrized)"
        if len(source.users) != 1:
            return (
                f"the output of {str(source.target)!r} has {len(source.users)} consumers: "
                "folding would change what the others see"
            )
        if self.calls[str(source.target)] != 1:
            return f"{str(source.target)!r} is called {self.calls[str(source.target)]} times"
        if isinstance(layer, nn.Linear) and _rank(source) != 2:
            return (
                f"Linear {str(source.target)!r} outputs rank {_rank(source)}: it acts on the "
                "last axis while BatchNorm normalizes axis 1"
            )
        return source, layer

    def consumer(self, node: fx.Node) -> tuple[fx.Node, nn.Module] | str:
        """The layer to fold into (after the BN), or why there is none."""
        users = list(node.users)
        if len(users) != 1:
            return f"its output has {len(users)} consumers"
        user = users[0]
        if user.op != "call_module" or user.args != (node,) or user.kwargs:
            return f"its output goes to {_describe(user, self.gm)}, not a conv or linear"
        layer = self.module(user)
        if not isinstance(layer, (*_CONVS, nn.Linear)) or not is_standard(layer):
            return f"its output goes to {_describe(user, self.gm)}, not a plain conv or linear"
        if self.calls[str(user.target)] != 1:
            return f"{str(user.target)!r} is called {self.calls[str(user.target)]} times"
        if isinstance(layer, nn.Linear) and _rank(node) != 2:
            return f"the following Linear {str(user.target)!r} acts on the last axis, not axis 1"
        if isinstance(layer, _CONVS) and pads_with_zeros(layer):  # type: ignore[arg-type]
            return (
                f"the following conv {str(user.target)!r} pads with zeros, which a fold would "
                "not shift"
            )
        return user, layer

    def rewrite_module_call(self, node: fx.Node, norm: nn.Module, token: str) -> None:
        name, kind = str(node.target), type(norm).__name__
        found_before = self.producer(node) if self.fold else "folding is off (--no-fold)"
        if not isinstance(found_before, str):
            source, layer = found_before
            if isinstance(layer, nn.Linear):
                fused: nn.Module = fold_bn_into_linear(layer, norm)  # type: ignore[arg-type]
            elif isinstance(layer, _CONV_TRANSPOSES):
                fused = fold_bn_into_conv_transpose(layer, norm)  # type: ignore[arg-type]
            else:
                fused = fold_bn_into_conv(layer, norm)  # type: ignore[arg-type]
            into = str(source.target)
            self.install(source, "folded", fused)
            node.replace_all_uses_with(source)
            self.gm.graph.erase_node(node)
            pattern = f"{_kind_token(layer)}+{token}"
            self.report._fold(Decision(name, kind, "folded", pattern, into))
            return
        found_after = self.consumer(node) if self.fold else found_before
        if not isinstance(found_after, str):
            user, layer = found_after
            if isinstance(layer, nn.Linear):
                fused = fold_bn_into_following_linear(norm, layer)  # type: ignore[arg-type]
            else:
                fused = fold_bn_into_following_conv(norm, layer)  # type: ignore[arg-type]
            into = str(user.target)
            self.install(user, "folded", fused)
            user.args = (_input_of(node),)
            self.gm.graph.erase_node(node)
            pattern = f"{token}+{_kind_token(layer)}"
            self.report._fold(Decision(name, kind, "folded", pattern, into))
            return
        reason = (
            found_before
            if found_before == found_after
            else f"not before: {found_before}; not after: {found_after}"
        )
        dtype = node.meta["tensor_meta"].dtype
        frozen = freeze_batch_norm(norm, dtype)  # type: ignore[arg-type]
        node.args, node.kwargs = (_input_of(node),), {}
        self.install(node, "frozen_bn", frozen)
        self.report._freeze(Decision(name, kind, "frozen", reason=reason))

    def rewrite_functional(self, node: fx.Node) -> None:
        """``F.batch_norm(x, buffer, buffer, ...)`` from a hand-written layer → FrozenAffine."""
        bound = normalize_function(
            node.target,  # type: ignore[arg-type]
            node.args,  # type: ignore[arg-type]
            node.kwargs,  # type: ignore[arg-type]
            normalize_to_only_use_kwargs=True,
        )
        if bound is None:
            raise ExportError(f"cannot read the arguments of batch_norm at {node.name}")
        kwargs = bound.kwargs
        name = f"{node.name} (functional batch_norm)"
        stats = [kwargs.get("running_mean"), kwargs.get("running_var")]
        if kwargs.get("training") or any(s is None for s in stats):
            raise ExportError(
                f"{name} normalizes with the statistics of each batch in eval mode, so its "
                "output depends on the other samples and cannot be frozen"
            )
        tensors: dict[str, torch.Tensor | None] = {}
        for key in ("running_mean", "running_var", "weight", "bias"):
            value = kwargs.get(key)
            if value is None:
                tensors[key] = None
            elif isinstance(value, fx.Node) and value.op == "get_attr":
                tensors[key] = _fetch_attr(self.gm, str(value.target))
            else:
                raise ExportError(
                    f"{name} takes its {key} from a computation, not a module buffer or "
                    "parameter: normserve cannot freeze it"
                )
        scale, shift = batch_norm_affine(
            tensors["running_mean"],  # type: ignore[arg-type]
            tensors["running_var"],  # type: ignore[arg-type]
            float(kwargs.get("eps", 1e-5)),
            tensors["weight"],
            tensors["bias"],
        )
        dtype = node.meta["tensor_meta"].dtype
        frozen_name = _fresh_name(self.gm, "frozen_bn")
        self.gm.add_submodule(frozen_name, FrozenAffine(scale.to(dtype), shift.to(dtype)))
        self.calls[frozen_name] += 1
        with self.gm.graph.inserting_before(node):
            frozen_node = self.gm.graph.call_module(frozen_name, (kwargs["input"],))
        frozen_node.meta = dict(node.meta)
        node.replace_all_uses_with(frozen_node)
        self.gm.graph.erase_node(node)
        self.report.batch_norm_calls += 1
        self.report._freeze(
            Decision(name, "batch_norm", "frozen", reason="functional batch_norm is frozen")
        )

    def run(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node.op == "call_function":
                if node.target is nn.functional.batch_norm:
                    self.rewrite_functional(node)
                continue
            if node.op != "call_module":
                continue
            module = self.module(node)
            name = str(node.target)
            token = _stat_norm_kind(module, name)
            if token is None:
                continue
            _check_statistics(module, name, self.report)
            if token == "bn":
                self.report.batch_norm_calls += 1
            else:
                self.report.instance_norm_running_stats_calls += 1
            self.rewrite_module_call(node, module, token)


def _freeze_modules(model: nn.Module, why: str, report: FreezeReport) -> nn.Module:
    """Fallback for models fx cannot trace: freeze every BatchNorm module in place."""
    report.traced = False
    report.warnings.append(
        f"torch.fx cannot trace {type(model).__name__} ({why}): every BatchNorm was frozen as a "
        "per-channel affine, none was folded"
    )
    for name, module in list(model.named_modules()):
        token = _stat_norm_kind(module, name) if name else None
        if token is None:
            continue
        if not is_standard(module):
            raise ExportError(
                f"{type(module).__name__} {name!r} customizes BatchNorm (forward, hooks or "
                f"parametrizations) and torch.fx cannot trace the model ({why}): normserve "
                "cannot tell what it computes, so it cannot freeze it"
            )
        _check_statistics(module, name, report)
        if token == "bn":
            report.batch_norm_calls += 1
        else:
            report.instance_norm_running_stats_calls += 1
        dtype = module.running_mean.dtype  # type: ignore[union-attr]
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, freeze_batch_norm(module, dtype))  # type: ignore[arg-type]
        report._freeze(
            Decision(name, type(module).__name__, "frozen", reason="model not traceable")
        )
    return model


def freeze_normalization(
    model: nn.Module, sample: torch.Tensor | tuple[torch.Tensor, ...], *, fold: bool = True
) -> tuple[nn.Module, FreezeReport]:
    """Return an eval-mode module with every BatchNorm folded or frozen, and what was done.

    ``sample``: one tensor per model input (a batch of a few real inputs).

    ``fold=False`` freezes every BatchNorm as an affine without folding (``--no-fold``): the
    graph still holds no BatchNormalization node, only extra Mul/Add.

    ``model`` must be an eval-mode copy owned by the caller: traced models keep their layers
    (folds create new modules), untraceable ones have their BatchNorm modules replaced.
    """
    if any(m.training for m in model.modules()):
        raise ExportError("freeze_normalization needs an eval-mode model")
    samples = (sample,) if isinstance(sample, torch.Tensor) else tuple(sample)
    report = FreezeReport(other_norms=count_norm_calls(model, samples))
    try:
        gm = _trace(model)
    except ExportError:
        raise
    except Exception as exc:  # fx raises many types for untraceable Python
        return _freeze_modules(model, first_line(exc), report), report
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*samples)
    except Exception as exc:
        raise ExportError(f"the model fails on a sample input: {first_line(exc)}") from exc
    _Rewriter(gm, report, fold).run()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), report
