"""The ``normserve`` command. Subcommands import torch lazily: ``serve`` never loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from normserve.errors import UserError

__all__ = ["app", "main"]

app = typer.Typer(
    name="normserve",
    help="Fold and freeze normalization, export to ONNX, prove parity, serve over HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


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


@app.command()
def train(
    arch: Annotated[str, typer.Option(help="Registry architecture to train.")] = "digits_cnn",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training split.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed for the split, initialization and order.")] = 0,
    out_path: Annotated[
        Path, typer.Option("--out", help="Checkpoint file to write.", dir_okay=False)
    ] = Path("checkpoints/digits_cnn.pt"),
) -> None:
    """Train an architecture on its bundled dataset and write a checkpoint."""
    from models.train import TrainConfig, train_to_file

    try:
        with Progress(
            TextColumn("training {task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task(arch, total=None, loss=float("nan"))

            def report(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, total=total, loss=loss)

            result = train_to_file(
                TrainConfig(arch=arch, epochs=epochs, seed=seed), out_path, report
            )
    except UserError as exc:
        raise _fail(str(exc)) from None
    out.print(
        f"validation accuracy {result.val_accuracy:.2%}  ({arch}, {epochs} epochs, seed {seed})"
    )
    out.print(f"wrote {out_path}")


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
    input_shape: Annotated[
        str | None, typer.Option(help="Per-sample input shape, e.g. 1,8,8 (bare state dicts).")
    ] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18).")] = None,
    rtol: Annotated[float, typer.Option(min=0.0, help="Parity relative tolerance.")] = 1e-4,
    atol: Annotated[float, typer.Option(min=0.0, help="Parity absolute tolerance.")] = 1e-5,
    no_fold: Annotated[
        bool, typer.Option("--no-fold", help="Freeze every BatchNorm as an affine, fold none.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing version.")] = False,
) -> None:
    """Fold and freeze normalization, export to ONNX, prove parity, write a repository entry."""
    from export.onnx_export import DEFAULT_OPSET
    from export.parity import Tolerance
    from export.pipeline import ExportOptions, run_export

    try:
        options = ExportOptions(
            checkpoint=checkpoint,
            repository=repository,
            name=name,
            version=version,
            arch=arch,
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


def _print_export(metadata: dict) -> None:
    report = metadata["export"]
    norm, graph, parity = report["normalization"], report["graph"], report["parity"]
    folds = ", ".join(f"{k} {v}" for k, v in norm["folded"].items()) or "none"
    out.print(
        f"batch norms: {norm['batch_norm_calls']}  folded: {folds}  "
        f"frozen as affine: {norm['frozen_affine']}"
    )
    out.print(
        f"BatchNormalization nodes: {graph['onnx_nodes'].get('BatchNormalization', 0)} exported, "
        f"{graph['ort_optimized_nodes'].get('BatchNormalization', 0)} after ORT optimization; "
        f"other norm ops: {graph['remaining_norm_ops'] or 'none'}"
    )
    for level, cmp in parity["vs_eager_fp32"].items():
        out.print(
            f"parity {level}: max abs {cmp['max_abs']:.3g}  max rel {cmp['max_rel']:.3g}  "
            f"(rtol {parity['rtol']:g}, atol {parity['atol']:g}, batches {parity['batch_sizes']})"
        )
    for warning in norm["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


@app.command()
def verify(
    entry: Annotated[Path, typer.Argument(help="Repository entry DIR/NAME/VERSION.")],
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint it was exported from.")],
    rtol: Annotated[float, typer.Option(min=0.0)] = 1e-4,
    atol: Annotated[float, typer.Option(min=0.0)] = 1e-5,
) -> None:
    """Re-run the parity proof of an existing entry against its checkpoint."""
    from export.parity import Tolerance
    from export.verify import verify_entry

    try:
        report = verify_entry(entry, checkpoint, Tolerance(rtol=rtol, atol=atol))
    except UserError as exc:
        raise _fail(str(exc)) from None
    for level, cmp in report.vs_eager_fp32.items():
        out.print(f"parity {level}: max abs {cmp.max_abs:.3g}  max rel {cmp.max_rel:.3g}")
    out.print(f"verified {entry}")


@app.command()
def serve(
    repository: Annotated[Path | None, typer.Option(help="Model repository directory.")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
) -> None:
    """Serve the model repository over HTTP (V2 protocol). Options override NORMSERVE_*."""
    from pydantic import ValidationError

    from service.server import serve as run_server
    from service.settings import Settings

    overrides = {
        k: v
        for k, v in {"repository": repository, "host": host, "port": port}.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
        run_server(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except UserError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    app()
