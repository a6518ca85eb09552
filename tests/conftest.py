"""Shared fixtures: one small trained checkpoint and its export, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits_cnn trained for 3 epochs (about a second): BN statistics are real, not 0/1."""
    from normserve.models.train import TrainConfig, train_to_file

    path = tmp_path_factory.mktemp("checkpoints") / "digits_cnn.pt"
    train_to_file(TrainConfig(epochs=3, seed=1), path)
    return path


@pytest.fixture(scope="session")
def digits_repository(tmp_path_factory: pytest.TempPathFactory, digits_checkpoint: Path) -> Path:
    """A model repository holding ``digits/1`` exported from ``digits_checkpoint``."""
    from normserve.export.from_checkpoint import ExportOptions, run_export

    repository = tmp_path_factory.mktemp("repository")
    run_export(ExportOptions(checkpoint=digits_checkpoint, repository=repository, name="digits"))
    return repository
