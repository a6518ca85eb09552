"""``normserve export``: checkpoint → folded, frozen, audited, proven repository entry.

The checkpoint is read as data (models/checkpoint.py), the model rebuilt from the one reading
of it that loads strictly (export/rebuild.py), and the proof runs on the user's sample inputs,
the architecture's validation data, or random inputs said loudly (export/inputs.py). The
entry is written only after every check has passed (export/entry.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from normserve.export.comparison import Tolerance
from normserve.export.entry import DEFAULT_MAX_BATCH_SIZE, ExportResult, write_export
from normserve.export.errors import ExportError
from normserve.export.inputs import ProofInputs, checkpoint_inputs, read_sample_inputs
from normserve.export.module_export import export_module
from normserve.export.onnx_export import DEFAULT_OPSET
from normserve.export.rebuild import float_dtype, rebuild, sha256_file
from normserve.model_repository import is_model_name, plan_entry
from normserve.models.checkpoint import Checkpoint, InputSpec, load_checkpoint

__all__ = ["ExportOptions", "ExportResult", "default_name", "run_export"]

Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``normserve export`` takes (DESIGN.md §7); None means "from the checkpoint"."""

    checkpoint: Path
    repository: Path = Path("model_repository")
    name: str | None = None
    version: int | None = None
    arch: str | None = None
    arch_config: dict[str, Any] | None = None
    input_shape: list[int] | None = None  # the single input's per-sample shape
    inputs: list[InputSpec] | None = None  # several inputs: name, shape, dtype each
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    dynamic_axes: dict[str, list[int]] = field(default_factory=dict)  # input name ("" = the
    # only input) → axes besides the batch
    sample_inputs: Path | None = None
    labels: list[str] | None = None
    state_dict_key: str | None = None
    strip_prefix: str | None = None
    opset: int = DEFAULT_OPSET
    tolerance: Tolerance = field(default_factory=Tolerance)
    fold: bool = True
    force: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE


def default_name(checkpoint: Path, arch: str) -> str:
    """The checkpoint's file name without its suffix, made a valid model name (``my model.pt``
    → ``my_model``); the architecture's name when nothing of it is usable."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", checkpoint.stem).strip("._-")[:64]
    stem = re.sub(r"\.{2,}", ".", stem)
    return stem if stem and is_model_name(stem) else arch.rsplit(":", 1)[-1]


def _given_inputs(options: ExportOptions) -> list[InputSpec] | None:
    """The input specs the command line gives, if any (before sample inputs are read)."""
    if options.inputs and options.input_shape:
        raise ExportError("pass --input-shape (one input) or --input (each input), not both")
    if options.inputs:
        return list(options.inputs)
    if options.input_shape:
        return [InputSpec(name="input", shape=list(options.input_shape))]
    return None


def _renamed(specs: list[InputSpec], options: ExportOptions) -> list[InputSpec]:
    """Input names from --input-names, then --dynamic-axes applied."""
    if options.input_names is not None:
        if len(options.input_names) != len(specs):
            raise ExportError(
                f"--input-names gives {len(options.input_names)} name(s) for {len(specs)} "
                f"input(s) ({', '.join(s.name for s in specs)})"
            )
        specs = [replace(s, name=n) for s, n in zip(specs, options.input_names, strict=True)]
    names = [s.name for s in specs]
    for name, axes in options.dynamic_axes.items():
        if name == "" and len(specs) != 1:
            raise ExportError(
                f"--dynamic-axes needs the input's name (NAME:AXES) for a model with "
                f"{len(specs)} inputs ({', '.join(names)})"
            )
        if name and name not in names:
            raise ExportError(f"--dynamic-axes {name}: no such input (inputs: {', '.join(names)})")
        index = names.index(name) if name else 0
        spec = specs[index]
        specs[index] = InputSpec(
            spec.name, spec.shape, spec.dtype, tuple(sorted({*spec.dynamic_axes, *axes}))
        )
    return specs


def _in_model_dtype(specs: list[InputSpec], model: nn.Module, say: Step) -> list[InputSpec]:
    """float32 inputs (the default) of a model whose weights are all another float dtype take
    that dtype: a float16 model is fed float16, as its eager forward needs."""
    dtype = float_dtype(model.parameters())
    name = str(dtype).removeprefix("torch.") if dtype is not None else "float32"
    if name == "float32" or not any(s.dtype == "float32" for s in specs):
        return specs
    say(f"the model's weights are {name}: its float32 inputs take {name}")
    return [replace(s, dtype=name) if s.dtype == "float32" else s for s in specs]


def _proof_inputs(checkpoint: Checkpoint, options: ExportOptions) -> tuple[Checkpoint, ProofInputs]:
    if options.sample_inputs is None:
        return checkpoint, checkpoint_inputs(checkpoint)
    found, specs = read_sample_inputs(options.sample_inputs, checkpoint.inputs)
    return replace(checkpoint, inputs=specs), found


def run_export(options: ExportOptions, step: Step | None = None) -> ExportResult:
    """Do every step in memory; write the entry only after every check has passed."""
    say = step or (lambda _msg: None)
    given = _given_inputs(options)
    sample_specs = None
    if given is None and options.sample_inputs is not None:
        # The samples define the inputs when nothing else does (read again below, checked).
        _, sample_specs = read_sample_inputs(options.sample_inputs, None)
    checkpoint = load_checkpoint(
        options.checkpoint,
        arch=options.arch,
        arch_config=options.arch_config,
        inputs=given or sample_specs,
        state_dict_key=options.state_dict_key,
        strip_prefix=options.strip_prefix,
    )
    checkpoint = replace(checkpoint, inputs=_renamed(list(checkpoint.inputs), options))
    name = options.name or default_name(options.checkpoint, checkpoint.arch)
    target, version = plan_entry(options.repository, name, options.version, options.force)

    say(f"rebuilding {checkpoint.arch}")
    original, reading = rebuild(checkpoint)
    checkpoint = replace(checkpoint, inputs=_in_model_dtype(list(checkpoint.inputs), original, say))
    checkpoint, proof = _proof_inputs(checkpoint, options)
    labels = options.labels if options.labels is not None else checkpoint.labels
    result = export_module(
        original,
        proof.tensors,
        input_names=[s.name for s in checkpoint.inputs],
        output_names=options.output_names or checkpoint.output_names,
        dynamic_axes={s.name: s.dynamic_axes for s in checkpoint.inputs if s.dynamic_axes},
        opset=options.opset,
        tolerance=options.tolerance,
        fold=options.fold,
        classifier=True if labels else None,
        inputs_kind=proof.kind,
        random_inputs=proof.random,
        step=say,
    )
    config = write_export(
        result,
        target=target,
        name=name,
        version=version,
        max_batch_size=options.max_batch_size,
        labels=labels,
        preprocess=checkpoint.preprocess,
        opset=options.opset,
        fold=options.fold,
        force=options.force,
        report={
            "checkpoint_sha256": sha256_file(options.checkpoint),
            "checkpoint": {"source": checkpoint.source, **reading.to_dict()},
            "arch": checkpoint.arch,
            "arch_config": checkpoint.arch_config,
            "inputs": [spec.to_dict() for spec in checkpoint.inputs],
            "training_metrics": checkpoint.metrics,
        },
    )
    return ExportResult(target, name, version, config, result.parity, result.freeze)
