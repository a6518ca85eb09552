"""The ``normserve`` command. Subcommands import torch lazily: ``serve`` never loads it."""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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


def _parse_shape(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(
            f"--input-shape must be comma-separated integers like 1,8,8, got {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise UserError(f"--input-shape dimensions must be positive, got {text!r}")
    return shape


def _parse_config(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--arch-config must be a JSON object, got {text!r}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"--arch-config must be a JSON object such as {{}}, got {text!r}")
    return config


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
    name: Annotated[str | None, typer.Option(help="Model name (default: the arch).")] = None,
    version: Annotated[int | None, typer.Option(min=1, help="Version (default: next).")] = None,
    arch: Annotated[
        str | None, typer.Option(help="Registry name or package.module:factory (overrides).")
    ] = None,
    arch_config: Annotated[
        str | None, typer.Option(help="Factory keyword arguments as JSON (overrides).")
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape, e.g. 1,8,8 (bare state dicts).")
    ] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset, 17..23 (default 18).")] = None,
    rtol: Annotated[float, typer.Option(min=0.0, help="Parity relative tolerance.")] = 1e-4,
    atol: Annotated[float, typer.Option(min=0.0, help="Parity absolute tolerance.")] = 1e-5,
    no_fold: Annotated[
        bool, typer.Option("--no-fold", help="Freeze every BatchNorm as an affine, fold none.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing version.")] = False,
) -> None:
    """Fold and freeze normalization, export to ONNX, prove parity, write a repository entry."""
    from normserve.export.comparison import Tolerance
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
            arch_config=_parse_config(arch_config),
            input_shape=_parse_shape(input_shape),
            opset=opset or DEFAULT_OPSET,
            tolerance=Tolerance(rtol=rtol, atol=atol),
            fold=not no_fold,
            force=force,
        )
        with err.status("exporting") as status:
            result = run_export(options, step=lambda msg: status.update(msg))
    except UserError as exc:
        raise _fail(str(exc)) from None
    _print_export(result.metadata)
    out.print(f"wrote {result.path}")


def _print_parity(parity: dict) -> None:
    tol = f"rtol {parity['rtol']:g}, atol {parity['atol']:g}"
    for name, check in parity["checks"].items():
        if not check.get("ran"):
            out.print(f"{name}: skipped ({check['skipped']})")
            continue
        for key, cmp in check["comparisons"].items():
            out.print(
                f"parity {name} {key}: max abs {cmp['max_abs']:.3g}  max rel {cmp['max_rel']:.3g}"
                f"  ({tol}, batches {parity['batch_sizes']})"
            )
        out.print(f"{name}: {'ok' if check['ok'] else 'FAILED'}")
    if parity.get("argmax_agreement") is not None:
        out.print(f"argmax agreement {parity['argmax_agreement']:.2%}")


def _print_export(metadata: dict) -> None:
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
    _print_parity(report["parity"])
    for note in report.get("notes", []):
        err.print(f"[cyan]note:[/] {note}", highlight=False)
    for warning in norm["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


@app.command()
def verify(
    entry: Annotated[Path, typer.Argument(help="Repository entry DIR/NAME/VERSION.")],
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint it was exported from.")],
    rtol: Annotated[
        float | None, typer.Option(min=0.0, help="Relative tolerance (default: recorded).")
    ] = None,
    atol: Annotated[
        float | None, typer.Option(min=0.0, help="Absolute tolerance (default: recorded).")
    ] = None,
) -> None:
    """Re-run the audit and the parity proof of an existing entry against its checkpoint."""
    from normserve.export.comparison import Tolerance
    from normserve.export.verify import verify_entry

    _importable_from_cwd()
    try:
        tolerance = None
        if rtol is not None or atol is not None:
            default = Tolerance()
            tolerance = Tolerance(
                rtol=default.rtol if rtol is None else rtol,
                atol=default.atol if atol is None else atol,
            )
        report = verify_entry(entry, checkpoint, tolerance)
    except UserError as exc:
        raise _fail(str(exc)) from None
    nodes = report.graph["onnx_nodes"].get("BatchNormalization", 0)
    optimized = report.graph["ort_optimized_nodes"].get("BatchNormalization", 0)
    out.print(f"BatchNormalization nodes: {nodes} exported, {optimized} after ORT optimization")
    _print_parity(report.parity.to_dict())
    if report.golden_probe is not None:
        out.print(f"golden probe: reproduced (max abs {report.golden_probe.max_abs:.3g})")
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
