from __future__ import annotations

from pathlib import Path

import torch

from normserve.models.checkpoint import load_checkpoint
from normserve.models.train import TrainConfig, train, train_to_file


def test_default_training_reaches_95_percent_and_records_batch_norm_statistics():
    # The defaults `normserve train` uses; ~4 s on 2 cores.
    result = train(TrainConfig())
    assert result.val_accuracy >= 0.95
    state = result.checkpoint.state_dict
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert len(means) == 3
    assert all(float(m.abs().max()) > 1e-3 for m in means)  # statistics were really updated


def test_training_is_reproducible_and_checkpoint_round_trips(tmp_path: Path):
    config = TrainConfig(epochs=1, seed=5)
    first = train_to_file(config, tmp_path / "a.pt")
    second = train(config)
    for key, value in first.checkpoint.state_dict.items():
        assert torch.equal(value, second.checkpoint.state_dict[key]), key
    loaded = load_checkpoint(tmp_path / "a.pt")
    assert loaded.arch == "digits_cnn"
    assert loaded.metrics is not None
    assert loaded.metrics["seed"] == 5
    assert list(tmp_path.iterdir()) == [tmp_path / "a.pt"]  # no temporary file left behind
