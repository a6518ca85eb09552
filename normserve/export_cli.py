"""The ``export`` and ``verify`` commands' options, how their text becomes values, and how their
reports are printed.

Kept apart from cli.py so each option is one line there. Parsing here is pure text → values
(shapes, dtypes, names, files of labels); every bad value is a ``UserError`` naming the option
and what was expected. Importing this module imports no torch: the commands import the export
side only when they run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from normserve.errors import UserError

__all__ = [
    "Arch",
    "ArchConfig",
    "DynamicAxes",
    "Input",
    "InputNames",
    "InputShape",
    "Labels",
    "MaxBatch",
    "OutputNames",
    "ParityFloor",
    "ParityMultiple",
    "SampleInputs",
    "StateDictKey",
    "StripPrefix",
    "parse_config",
    "parse_dynamic_axes",
    "parse_inputs",
    "parse_names",
    "parse_shape",
    "print_export",
    "print_parity",
    "read_labels",
    "tolerance",
]

Arch = Annotated[
    str | None,
    typer.Option(help="Registry name or package.module:factory (overrides the checkpoint's)."),
]
ArchConfig = Annotated[
    str | None, typer.Option(help="Factory keyword arguments as JSON (overrides).")
]
InputShape = Annotated[
    str | None,
    typer.Option(help="The single input's per-sample shape, e.g. 1,8,8 (files without one)."),
]
Input = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        help="One input per option, in forward()'s order: NAME:SHAPE[:DTYPE], e.g. "
        "image:3,32,32 or tokens:16:int64 (dtype default float32).",
    ),
]
InputNames = Annotated[
    str | None, typer.Option(help="Input names, comma-separated (default: the checkpoint's).")
]
OutputNames = Annotated[
    str | None,
    typer.Option(
        help="Output names, comma-separated (default: the checkpoint's, dict keys, "
        "output_0.. for a tuple, 'output' for one tensor)."
    ),
]
DynamicAxes = Annotated[
    list[str] | None,
    typer.Option(
        help="[NAME:]AXES whose size may vary besides the batch, e.g. tokens:1 or image:2,3 "
        "(axis 0 is the batch); repeat per input."
    ),
]
SampleInputs = Annotated[
    Path | None,
    typer.Option(
        help="Real inputs for the proof and the golden probe: an .npz with one array per input "
        "(by name, or in order), samples on axis 0.",
        dir_okay=False,
    ),
]
Labels = Annotated[
    Path | None,
    typer.Option(help="Class names: a text file, one per line, or a JSON list.", dir_okay=False),
]
MaxBatch = Annotated[
    int, typer.Option(min=1, help="Largest batch the server forms (model.json max_batch_size).")
]
StateDictKey = Annotated[
    str | None,
    typer.Option(help="The checkpoint entry holding the state dict (e.g. model_state_dict)."),
]
StripPrefix = Annotated[
    str | None, typer.Option(help="Prefix to strip from every key (e.g. module.).")
]
ParityMultiple = Annotated[
    float | None,
    typer.Option(min=0.0, help="Proof: allowed error as a multiple of eager's own (default 8)."),
]
ParityFloor = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        help="Proof: error floor in machine epsilons of the output dtype x the output's scale "
        "(default 16).",
    ),
]


def parse_shape(text: str, option: str = "--input-shape") -> list[int]:
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(
            f"{option} must be comma-separated integers like 1,8,8, got {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise UserError(f"{option} dimensions must be positive, got {text!r}")
    return shape


def parse_config(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--arch-config must be a JSON object, got {text!r}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"--arch-config must be a JSON object such as {{}}, got {text!r}")
    return config


def parse_names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise UserError(f"{option} must be names separated by commas, got {text!r}")
    return names


def parse_inputs(items: list[str] | None) -> list[Any] | None:
    """``--input NAME:SHAPE[:DTYPE]`` options → input specs."""
    if not items:
        return None
    from normserve.models.input_spec import InputSpec, parse_dtype

    specs = []
    for item in items:
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise UserError(
                f"--input must be NAME:SHAPE or NAME:SHAPE:DTYPE like tokens:16:int64, got {item!r}"
            )
        dtype = parse_dtype(parts[2], f"--input {item}: dtype") if len(parts) == 3 else "float32"
        specs.append(InputSpec(parts[0], parse_shape(parts[1], f"--input {item}"), dtype))
    return specs


def parse_dynamic_axes(items: list[str] | None) -> dict[str, list[int]]:
    """``--dynamic-axes [NAME:]AXES`` options → input name ("" for the only one) → axes."""
    found: dict[str, list[int]] = {}
    for item in items or []:
        name, _, axes = item.rpartition(":")
        try:
            numbers = [int(a) for a in axes.split(",")]
        except ValueError:
            numbers = []
        if not numbers or any(a < 1 for a in numbers):
            raise UserError(
                f"--dynamic-axes must be [NAME:]AXES with axes ≥ 1 (0 is the batch, always "
                f"dynamic), like tokens:1 or image:2,3, got {item!r}"
            )
        found[name] = sorted({*found.get(name, []), *numbers})
    return found


def read_labels(path: Path | None) -> list[str] | None:
    """Class names from a JSON list, or from a text file with one per line (blank lines and
    surrounding spaces dropped)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--labels {path}: cannot read: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise UserError(f"--labels {path}: not JSON: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise UserError(f"--labels {path}: expected a JSON list of non-empty strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise UserError(f"--labels {path} holds no labels")
    return labels


def print_parity(out: Console, parity: dict) -> None:
    """The proof's figures: each witness's largest error against what the rule allows."""
    rule = parity.get("tolerance") or {}
    out.print(
        f"proof: error <= {rule.get('multiple', '?'):g} x eager's error + "
        f"{rule.get('floor', '?'):g} eps x scale, against float64, on {parity['inputs']}, "
        f"batches {parity['batch_sizes']}",
        highlight=False,
    )
    for size, sizes in (parity.get("other_sizes") or {}).items():
        out.print(f"dynamic axis {size}: proven at sizes {sizes}", highlight=False)
    for name, check in parity["checks"].items():
        if not check.get("ran"):
            out.print(f"{name}: skipped ({check['skipped']})", highlight=False)
            continue
        for key, cmp in check["comparisons"].items():
            ratio = f" ({cmp['ratio']:.2g} x eager's)" if cmp.get("ratio") is not None else ""
            out.print(
                f"  {name} {key}: max error {cmp['error']:.3g}{ratio}, allowed {cmp['bound']:.3g}",
                highlight=False,
            )
        out.print(f"{name}: {'ok' if check['ok'] else 'FAILED'}", highlight=False)
    if parity.get("argmax_agreement") is not None:
        out.print(f"argmax agreement {parity['argmax_agreement']:.2%}")


def print_export(out: Console, err: Console, metadata: dict) -> None:
    """What an export did: folds, remaining norm ops, the tensors, the proof, any warning."""
    report = metadata["export"]
    norm = report["normalization"]
    folds = ", ".join(f"{k} {v}" for k, v in norm["folded"].items()) or "none"
    out.print(
        f"batch norms: {norm['batch_norm_calls']}  folded: {folds}  "
        f"frozen as affine: {norm['frozen_affine']}"
    )
    nodes = norm["batch_normalization_nodes"]
    out.print(
        f"BatchNormalization nodes: {nodes['exported']} exported, "
        f"{nodes['ort_optimized']} after ORT optimization; "
        f"other norm ops: {norm['remaining_norm_ops'] or 'none'}"
    )
    for kind in ("inputs", "outputs"):
        shown = ", ".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in metadata[kind])
        out.print(f"{kind}: {shown}", highlight=False)
    reading = report.get("checkpoint") or {}
    if reading.get("source") != "normserve.checkpoint/1" or reading.get("strip_prefix"):
        prefix = reading.get("strip_prefix")
        stripped = f" without prefix {prefix!r}" if prefix else ""
        where = reading.get("state_dict_key") or "the file"
        out.print(f"state dict: {where}{stripped}", highlight=False)
    print_parity(out, report["parity"])
    for note in report.get("notes", []):
        err.print(f"[cyan]note:[/] {note}", highlight=False)
    for warning in report.get("warnings", []):
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


def tolerance(multiple: float | None, floor: float | None, recorded_in: Path | None = None) -> Any:
    """The proof's tolerance: the options given, the rest recorded in the entry
    ``recorded_in`` (verify) or the defaults."""
    from normserve.export.comparison import Tolerance

    base = Tolerance()
    if recorded_in is not None:
        from normserve.export.verify import recorded_tolerance
        from normserve.model_repository import VersionEntry, read_entry

        base = recorded_tolerance(read_entry(VersionEntry.at(recorded_in)))
    return Tolerance(
        multiple=base.multiple if multiple is None else multiple,
        floor=base.floor if floor is None else floor,
    )
