"""Rebuilding the eager model from a checkpoint, and the inputs the proof runs on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from normserve.export.errors import ExportError
from normserve.export.rebuild import build_eval_model, parity_inputs, sha256_file
from normserve.models.checkpoint import Checkpoint, InputSpec, load_checkpoint
from normserve.models.datasets import load_dataset


def test_rebuilt_model_is_in_eval_mode_with_the_checkpoint_s_tensors(digits_checkpoint: Path):
    checkpoint = load_checkpoint(digits_checkpoint)
    model = build_eval_model(checkpoint)
    assert not any(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint.state_dict[key]), key


def test_a_state_dict_that_does_not_fit_is_one_line_naming_the_arch(digits_checkpoint: Path):
    checkpoint = load_checkpoint(digits_checkpoint)
    checkpoint.state_dict = dict(checkpoint.state_dict)
    checkpoint.state_dict.pop(next(iter(checkpoint.state_dict)))
    with pytest.raises(ExportError, match=r"does not fit arch 'digits_cnn': .*Missing key"):
        build_eval_model(checkpoint)


def test_proof_inputs_are_the_validation_split_when_the_dataset_is_known(
    digits_checkpoint: Path,
):
    checkpoint = load_checkpoint(digits_checkpoint)
    inputs, kind = parity_inputs(checkpoint, count=10)
    assert kind == "validation split of digits"
    data = load_dataset("digits", seed=checkpoint.metrics["seed"])
    assert torch.equal(inputs, data.x_val[:10])


def test_proof_inputs_are_seeded_random_for_an_unknown_architecture():
    checkpoint = Checkpoint(
        arch="tests.export.user_models:tiny_net",
        state_dict={},
        input=InputSpec(name="input", shape=[3, 4, 4], dtype="float64"),
    )
    first, kind = parity_inputs(checkpoint, count=5)
    again, _ = parity_inputs(checkpoint, count=5)
    assert kind == "random normal"
    assert first.shape == (5, 3, 4, 4)
    assert first.dtype == torch.float64
    assert torch.equal(first, again)


def test_sha256_file_is_the_file_s_digest(tmp_path: Path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
