"""Rebuilding the eager model from a checkpoint: the files users really have (training dicts,
Lightning, DataParallel, torch.compile), read only when exactly one reading loads strictly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from normserve.export.errors import ExportError
from normserve.export.rebuild import build_eval_model, rebuild, sha256_file
from normserve.models.checkpoint import InputSpec, load_checkpoint
from normserve.models.checkpoint_files import CheckpointError
from tests.export.user_models import trained_tiny_net

ARCH = "tests.export.user_models:tiny_net"
CONFIG = {"width": 6, "classes": 4}
INPUTS = [InputSpec("input", [3, 8, 8])]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return trained_tiny_net(**CONFIG)


def _load(path: Path, **kw: object):
    return load_checkpoint(path, arch=ARCH, arch_config=CONFIG, inputs=INPUTS, **kw)  # type: ignore[arg-type]


def _same_tensors(rebuilt: nn.Module, model: nn.Module) -> bool:
    ours, theirs = rebuilt.state_dict(), model.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


LAYOUTS = {
    "bare state dict": lambda sd: sd,
    "training dict": lambda sd: {
        "epoch": 3,
        "model_state_dict": sd,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "loss": 0.25,
    },
    "lightning": lambda sd: {
        "epoch": 1,
        "global_step": 40,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": _prefixed(sd, "model."),
        "optimizer_states": [{"state": {}}],
    },
    "DataParallel": lambda sd: _prefixed(sd, "module."),
    "torch.compile": lambda sd: {"model": _prefixed(sd, "_orig_mod.")},
    "DDP around torch.compile": lambda sd: {"state_dict": _prefixed(sd, "module._orig_mod.")},
}
EXPECTED = {
    "bare state dict": (None, ""),
    "training dict": ("model_state_dict", ""),
    "lightning": ("state_dict", "model."),
    "DataParallel": (None, "module."),
    "torch.compile": ("model", "_orig_mod."),
    "DDP around torch.compile": ("state_dict", "module._orig_mod."),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_usual_layouts_are_read_when_exactly_one_reading_loads(
    layout: str, model: nn.Module, tmp_path: Path
):
    path = tmp_path / "checkpoint.pt"
    torch.save(LAYOUTS[layout](model.state_dict()), path)
    rebuilt, reading = rebuild(_load(path))
    assert (reading.key, reading.prefix) == EXPECTED[layout]
    assert _same_tensors(rebuilt, model)
    assert not any(m.training for m in rebuilt.modules())


def test_two_readings_that_both_load_are_refused_naming_them_and_the_flags(
    model: nn.Module, tmp_path: Path
):
    path = tmp_path / "ema.pt"
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": model.state_dict(), "ema_state_dict": ema}, path)
    with pytest.raises(ExportError) as caught:
        rebuild(_load(path))
    message = str(caught.value)
    assert "2 readings of the checkpoint load strictly" in message
    assert "'model_state_dict'" in message
    assert "'ema_state_dict'" in message
    assert "--state-dict-key" in message
    assert "--strip-prefix" in message
    assert "\n" not in message
    # ...and the flag picks one.
    rebuilt, reading = rebuild(_load(path, state_dict_key="ema_state_dict"))
    assert reading.key == "ema_state_dict"
    assert torch.equal(rebuilt.state_dict()["fc.bias"], ema["fc.bias"])


def test_no_reading_that_loads_is_refused_with_what_each_lacks(model: nn.Module, tmp_path: Path):
    path = tmp_path / "partial.pt"
    state = dict(model.state_dict())
    state.pop("fc.bias")
    torch.save({"model_state_dict": state, "backbone": _prefixed(state, "module.")}, path)
    with pytest.raises(ExportError) as caught:
        rebuild(_load(path))
    message = str(caught.value)
    assert "no reading of the checkpoint loads strictly" in message
    assert "'model_state_dict': 1 missing (e.g. 'fc.bias')" in message
    assert "--state-dict-key" in message


def test_a_prefix_that_is_not_shared_by_every_key_is_stripped_only_when_asked(
    model: nn.Module, tmp_path: Path
):
    # A Lightning module holding the network and a loss with a buffer: only --strip-prefix
    # selects the network's keys (and model.json records how many were left out).
    path = tmp_path / "lightning.pt"
    state = {**_prefixed(model.state_dict(), "model."), "criterion.weight": torch.ones(4)}
    torch.save({"state_dict": state}, path)
    with pytest.raises(ExportError, match=r"does not fit arch .*21 unexpected.*--strip-prefix"):
        rebuild(_load(path))
    rebuilt, reading = rebuild(_load(path, strip_prefix="model."))
    assert _same_tensors(rebuilt, model)
    assert reading.to_dict() == {
        "state_dict_key": "state_dict",
        "strip_prefix": "model.",
        "tensors": len(model.state_dict()),
        "ignored_keys": 1,
    }


def test_flags_that_name_nothing_in_the_file_are_one_line(model: nn.Module, tmp_path: Path):
    path = tmp_path / "training.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 2}, path)
    with pytest.raises(CheckpointError, match=r"--state-dict-key 'weights' is not in .*'epoch'"):
        _load(path, state_dict_key="weights")
    with pytest.raises(CheckpointError, match="is not a dict of parameter names to tensors"):
        _load(path, state_dict_key="epoch")
    with pytest.raises(CheckpointError, match=r"--strip-prefix 'net\.': no key"):
        _load(path, strip_prefix="net.")


def test_a_training_checkpoint_without_arch_says_only_what_is_missing(
    model: nn.Module, tmp_path: Path
):
    path = tmp_path / "training.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, inputs=INPUTS)
    assert "training checkpoint (keys: 'epoch', 'model_state_dict')" in str(caught.value)
    assert "pass --arch package.module:factory to export it" in str(caught.value)
    assert "--input-shape" not in str(caught.value)  # it was given
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, arch=ARCH)
    assert "--arch" not in str(caught.value).split("pass ")[1]  # it was given
    assert "--input-shape C,H,W" in str(caught.value)


def test_rebuilt_model_is_in_eval_mode_with_the_checkpoint_s_tensors(digits_checkpoint: Path):
    checkpoint = load_checkpoint(digits_checkpoint)
    model = build_eval_model(checkpoint)
    assert not any(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint.state_dict[key]), key


def test_a_state_dict_that_does_not_fit_is_one_line_naming_the_arch(digits_checkpoint: Path):
    raw = torch.load(digits_checkpoint, weights_only=True)
    raw["state_dict"].pop("fc.bias", None) or raw["state_dict"].pop(next(iter(raw["state_dict"])))
    path = digits_checkpoint.parent / "missing-one.pt"
    torch.save(raw, path)
    with pytest.raises(ExportError, match=r"does not fit arch 'digits_cnn': 1 missing"):
        build_eval_model(load_checkpoint(path))


def test_sha256_file_is_the_file_s_digest(tmp_path: Path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_state_dict_in_another_float_dtype_rebuilds_in_that_dtype(
    dtype: torch.dtype, model: nn.Module, tmp_path: Path
):
    """``model.half().state_dict()``: load_state_dict alone would copy the values into the
    factory's float32 parameters and the export would be a float32 model."""
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()},
        path,
    )
    rebuilt, _ = rebuild(_load(path))
    assert {p.dtype for p in rebuilt.parameters()} == {dtype}
    assert {b.dtype for b in rebuilt.buffers() if b.is_floating_point()} == {dtype}
    expected = {k: v.to(dtype) for k, v in model.state_dict().items() if v.is_floating_point()}
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in expected.items())


def test_a_state_dict_of_mixed_float_dtypes_keeps_the_factory_s_dtype(
    model: nn.Module, tmp_path: Path
):
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    path = tmp_path / "checkpoint.pt"
    torch.save({**state, first: state[first].half()}, path)
    rebuilt, _ = rebuild(_load(path))
    assert {p.dtype for p in rebuilt.parameters()} == {torch.float32}
