"""How ``normserve train`` shows itself: the registered architectures in its help and in shell
completion, and its progress bar.

The architectures are looked up only when asked for (help shown, a completion requested): the
registry imports torch, which no other command line should pay for, and which the serving-only
install does not have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperCommand, TyperOption

__all__ = ["ARCH_HELP", "TrainCommand", "architectures", "complete_architecture", "progress_bar"]

ARCH_HELP = "Registry architecture to train."


def architectures() -> list[tuple[str, str]]:
    """(name, what it trains on) for every registered architecture; empty without torch."""
    try:
        from normserve.models.registry import get_architecture, list_architectures
    except ImportError:  # the serving-only install: no torch, nothing to train
        return []
    return [
        (name, f"{arch.dataset}, {arch.epochs} epochs")
        for name, arch in ((n, get_architecture(n)) for n in list_architectures())
    ]


def complete_architecture(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion for ``--arch``: the names that start with what was typed."""
    return [(name, about) for name, about in architectures() if name.startswith(incomplete)]


class TrainCommand(TyperCommand):
    """``train``, whose ``--arch`` help names the registered architectures."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        listed = architectures()
        names = (
            "; ".join(f"{name} ({about})" for name, about in listed)
            if listed
            else "none: install normserve[export] to train"
        )
        for param in self.params:
            if isinstance(param, TyperOption) and param.name == "arch":
                param.help = f"{ARCH_HELP} One of: {names}."
        super().format_help(ctx, formatter)


@contextmanager
def progress_bar(console: Console, arch: str) -> Iterator[Callable[[int, int, float], None]]:
    """A transient bar on ``console``; yields the callback training reports to. It says
    "loading data" until the first report, then steps done of steps planned and the last loss
    (once there is one)."""
    with Progress(
        TextColumn("training {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(arch, total=None, status="loading data")

        def report(step: int, total: int, loss: float) -> None:
            status = f"{step}/{total} steps"
            if math.isfinite(loss):
                status += f"  loss {loss:.4f}"
            progress.update(task, completed=step, total=total, status=status)

        yield report
