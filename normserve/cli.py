"""The ``normserve`` command. Subcommands import torch lazily: ``serve`` never loads it."""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from normserve import export_cli as ex
from normserve.errors import UserError
from normserve.serve_options import ServeCommand, settings_given
from normserve.train_display import ARCH_HELP, TrainCommand, complete_architecture, progress_bar

__all__ = ["app", "main"]

app = typer.Typer(
    name="normserve",
    help="Fold and freeze normalization, export to ONNX, prove parity, serve over HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        out.print(f"normserve {distribution_version('normserve')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print normserve's version and exit.",
        ),
    ] = False,
) -> None:
    """Fold and freeze normalization, export to ONNX, prove parity, serve over HTTP."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _importable_from_cwd() -> None:
    """Let ``--arch package.module:factory`` find the user's package in the working directory,
    as ``python -m`` would (a console script's sys.path starts at its own bin directory)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


@app.command(cls=TrainCommand)
def train(
    arch: Annotated[
        str, typer.Option(help=ARCH_HELP, autocompletion=complete_architecture)
    ] = "digits_cnn",
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Passes over the training split (default: per arch).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many optimizer steps.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, initialization and order.")] = 0,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Checkpoint to write (default checkpoints/ARCH.pt).", dir_okay=False
        ),
    ] = None,
) -> None:
    """Train a registry architecture on its bundled or generated dataset; write a checkpoint."""
    from normserve.models.train import TrainConfig, train_to_file

    target = out_path or Path("checkpoints") / f"{arch}.pt"
    try:
        with progress_bar(err, arch) as report:
            config = TrainConfig(arch=arch, epochs=epochs, max_steps=max_steps, seed=seed)
            result = train_to_file(config, target, report)
    except UserError as exc:
        raise _fail(str(exc)) from None
    metrics = result.checkpoint.metrics or {}
    ran = f"{metrics.get('steps')} steps = {metrics.get('epochs'):g} epochs"
    out.print(f"{result.summary()}  ({arch}, {ran}, seed {seed})")
    out.print(f"wrote {target}")


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pt) to export.")],
    repository: Annotated[Path, typer.Option(help="Model repository directory.")] = Path(
        "model_repository"
    ),
    name: Annotated[
        str | None, typer.Option(help="Model name (default: the checkpoint's file name).")
    ] = None,
    version: Annotated[int | None, typer.Option(min=1, help="Version (default: next).")] = None,
    arch: ex.Arch = None,
    arch_config: ex.ArchConfig = None,
    input_shape: ex.InputShape = None,
    inputs: ex.Input = None,
    input_names: ex.InputNames = None,
    output_names: ex.OutputNames = None,
    dynamic_axes: ex.DynamicAxes = None,
    sample_inputs: ex.SampleInputs = None,
    labels: ex.Labels = None,
    max_batch_size: ex.MaxBatch = 64,
    state_dict_key: ex.StateDictKey = None,
    strip_prefix: ex.StripPrefix = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset, 17..23 (default 18).")] = None,
    parity_multiple: ex.ParityMultiple = None,
    parity_floor: ex.ParityFloor = None,
    no_fold: Annotated[
        bool, typer.Option("--no-fold", help="Freeze every BatchNorm as an affine, fold none.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing version.")] = False,
) -> None:
    """Fold and freeze normalization, export to ONNX, prove parity, write a repository entry."""
    from normserve.export.from_checkpoint import ExportOptions, run_export
    from normserve.export.onnx_export import DEFAULT_OPSET

    _importable_from_cwd()
    try:
        options = ExportOptions(
            checkpoint=checkpoint,
            repository=repository,
            name=name,
            version=version,
            arch=arch,
            arch_config=ex.parse_config(arch_config),
            input_shape=ex.parse_shape(input_shape) if input_shape is not None else None,
            inputs=ex.parse_inputs(inputs),
            input_names=ex.parse_names(input_names, "--input-names"),
            output_names=ex.parse_names(output_names, "--output-names"),
            dynamic_axes=ex.parse_dynamic_axes(dynamic_axes),
            sample_inputs=sample_inputs,
            labels=ex.read_labels(labels),
            max_batch_size=max_batch_size,
            state_dict_key=state_dict_key,
            strip_prefix=strip_prefix,
            opset=opset or DEFAULT_OPSET,
            tolerance=ex.tolerance(parity_multiple, parity_floor),
            fold=not no_fold,
            force=force,
        )
        with err.status("exporting") as status:
            result = run_export(options, step=lambda msg: status.update(msg))
    except UserError as exc:
        raise _fail(str(exc)) from None
    ex.print_export(out, err, result.metadata)
    out.print(f"wrote {result.path}")


@app.command()
def verify(
    entry: Annotated[Path, typer.Argument(help="Repository entry DIR/NAME/VERSION.")],
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint it was exported from.")],
    arch: Annotated[
        str | None,
        typer.Option(help="The recorded architecture; required to run an import path."),
    ] = None,
    sample_inputs: ex.SampleInputs = None,
    parity_multiple: ex.ParityMultiple = None,
    parity_floor: ex.ParityFloor = None,
) -> None:
    """Re-run the audit and the parity proof of an existing entry against its checkpoint."""
    from normserve.export.verify import verify_entry

    _importable_from_cwd()
    try:
        tolerance = None
        if parity_multiple is not None or parity_floor is not None:
            tolerance = ex.tolerance(parity_multiple, parity_floor, recorded_in=entry)
        report = verify_entry(entry, checkpoint, tolerance, arch=arch, sample_inputs=sample_inputs)
    except UserError as exc:
        raise _fail(str(exc)) from None
    nodes = report.graph["onnx_nodes"].get("BatchNormalization", 0)
    optimized = report.graph["ort_optimized_nodes"].get("BatchNormalization", 0)
    out.print(f"BatchNormalization nodes: {nodes} exported, {optimized} after ORT optimization")
    ex.print_parity(out, report.parity.to_dict())
    if report.golden_probe is not None:
        out.print(f"golden probe: reproduced (max abs diff {report.golden_probe:.3g})")
    out.print(f"verified {entry}")


@app.command(cls=ServeCommand)
def serve(ctx: typer.Context) -> None:
    """Serve the model repository over HTTP (V2 protocol).

    Every option is a serving setting and can be set instead by its NORMSERVE_* variable; an
    option given wins over the variable. An unknown NORMSERVE_* variable, an empty repository
    or a busy port stops start-up with one line.
    """
    from pydantic import ValidationError

    from normserve.service.http.server import serve as run_server
    from normserve.service.settings import Settings, check_environment

    try:
        check_environment(os.environ)
        settings = Settings(**settings_given(ctx))
        run_server(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except UserError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    app()
