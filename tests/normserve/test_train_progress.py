"""``normserve train``'s progress bar and summary say what happens: no "0/None steps loss nan"
before the first step, and the epochs that really ran when ``--max-steps`` cuts training short."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from normserve import cli
from normserve.models.datasets import load_dataset


def test_progress_bar_never_shows_unknowns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    frames = io.StringIO()  # every frame the live bar draws, as a terminal would get them
    terminal = Console(file=frames, force_terminal=True, color_system=None, width=160)
    monkeypatch.setattr(cli, "err", terminal)
    result = CliRunner().invoke(
        cli.app, ["train", "--max-steps", "3", "--seed", "4", "--out", str(tmp_path / "d.pt")]
    )
    assert result.exit_code == 0, result.output
    drawn = frames.getvalue()
    assert "training digits_cnn" in drawn  # the bar was drawn at all
    assert "None" not in drawn
    assert "nan" not in drawn
    shown = re.findall(r"(\d+)/(\d+) steps", drawn)
    assert shown, drawn
    assert {total for _, total in shown} == {"3"}  # the plan is known from the first frame


def test_summary_reports_the_epochs_that_ran(tmp_path: Path):
    steps, seed = 7, 5
    result = CliRunner().invoke(
        cli.app,
        ["train", "--max-steps", str(steps), "--seed", str(seed), "--out", str(tmp_path / "d.pt")],
    )
    assert result.exit_code == 0, result.output
    train_size = len(load_dataset("digits", seed=seed).x_train)
    batches = -(-train_size // 64)  # TrainConfig's batch size; no batch of one sample here
    assert train_size % 64 != 1
    assert f"{steps} steps = {steps / batches:.3g} epochs" in result.output
