"""``normserve export`` given corrupt files, wrong keys, mismatching shapes, unsafe content or a
place it cannot write: exit status 1, one line starting ``error:``, and no repository entry,
not even a hidden staging directory, left behind.

Two were bugs: an ``--input-shape`` the architecture cannot take ended in a PyTorch traceback;
a checkpoint recording an import path as its architecture (``subprocess:run``) had that
callable imported and called with the recorded ``arch_config``, weights_only or not. An
unwritable repository used to be found only after the whole export; it is now refused first.
Root (as here and in CI) can write through file modes, so unwritable places are ones no mode
can open: a file where a directory must go, /proc, /sys; a disk filling up mid-write is an
``ENOSPC`` from the writer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import normserve.model_repository as export_repository
from normserve.cli import app
from normserve.model_repository import RepositoryError


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (hidden ones too), or [] when it does not exist."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def export(runner: CliRunner, checkpoint: Path, repository: Path, *extra: str):
    return runner.invoke(app, ["export", str(checkpoint), "--repository", str(repository), *extra])


def rewrite(source: Path, target: Path, change) -> Path:
    raw = torch.load(source, weights_only=True)
    change(raw)
    torch.save(raw, target)
    return target


def _rename_keys(raw: dict) -> None:
    # A prefix no wrapper writes (module., model. and _orig_mod. are read: test_rebuild.py).
    raw["state_dict"] = {f"net.{k}": v for k, v in raw["state_dict"].items()}


def _drop_key(raw: dict) -> None:
    raw["state_dict"].pop(next(iter(raw["state_dict"])))


def _wrong_shape(raw: dict) -> None:
    name = next(k for k, v in raw["state_dict"].items() if v.dim() == 4)
    raw["state_dict"][name] = torch.zeros(3, 3, 3, 3)


def _no_format(raw: dict) -> None:
    raw.pop("format")


def _bad_input(raw: dict) -> None:
    raw["input"] = {"name": "input", "shape": [1, -8, 8]}


def _labels_not_strings(raw: dict) -> None:
    raw["labels"] = [1, 2, 3]


def _state_not_tensors(raw: dict) -> None:
    raw["state_dict"] = {"w": [1.0, 2.0]}


CHECKPOINT_CASES = [
    ("state_dict keys renamed", _rename_keys, "state_dict does not fit arch 'digits_cnn'"),
    ("a tensor missing", _drop_key, "state_dict does not fit arch 'digits_cnn'"),
    ("a tensor of the wrong shape", _wrong_shape, "state_dict does not fit arch 'digits_cnn'"),
    ("no format key", _no_format, "is not a normserve checkpoint"),
    ("negative input shape", _bad_input, "input 'shape' must be positive ints"),
    ("labels not strings", _labels_not_strings, "'labels' must be a list of strings"),
    ("state_dict of lists", _state_not_tensors, "'state_dict' must map parameter names"),
]


@pytest.mark.parametrize(
    ("change", "needle"), [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_wrong_keys_and_shapes_in_a_checkpoint_are_one_line(
    runner, digits_checkpoint: Path, tmp_path: Path, change, needle
):
    bad = rewrite(digits_checkpoint, tmp_path / "bad.pt", change)
    repository = tmp_path / "repo"
    assert needle in one_error_line(export(runner, bad, repository))
    assert tree(repository) == []


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not a readable torch file"),
        (os.urandom(4096), "not a readable torch file"),
        (b"PK\x03\x04" + os.urandom(200), "not a readable torch file"),
        (None, "not a readable torch file"),  # a real checkpoint cut in half
    ],
    ids=["empty", "random bytes", "zip magic then garbage", "truncated checkpoint"],
)
def test_corrupt_files_are_one_line(
    runner, digits_checkpoint: Path, tmp_path: Path, content, needle
):
    bad = tmp_path / "corrupt.pt"
    data = digits_checkpoint.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content is None else content)
    repository = tmp_path / "repo"
    assert needle in one_error_line(export(runner, bad, repository))
    assert tree(repository) == []


def test_a_directory_or_a_url_as_checkpoint_is_one_line(runner, tmp_path: Path):
    repository = tmp_path / "repo"
    assert "does not exist or is not a file" in one_error_line(export(runner, tmp_path, repository))
    url = "http://127.0.0.1:9/checkpoint.pt"
    assert "does not exist or is not a file" in one_error_line(
        export(runner, Path(url), repository)
    )
    assert tree(repository) == []


@pytest.mark.parametrize(
    "shape", ["3,8,8", "1,1,1", "1,8"], ids=["channels", "too small to pool", "rank"]
)
def test_an_input_shape_the_architecture_cannot_take_is_one_line(
    runner, digits_checkpoint: Path, tmp_path: Path, shape: str
):
    """Was a PyTorch traceback."""
    repository = tmp_path / "repo"
    line = one_error_line(export(runner, digits_checkpoint, repository, "--input-shape", shape))
    assert "the model cannot run on an input of shape" in line
    assert tree(repository) == []


class _WritesAMarker:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_pickled_code_is_refused_and_the_code_never_runs(
    runner, digits_checkpoint: Path, tmp_path: Path
):
    marker = tmp_path / "code-ran"
    raw = torch.load(digits_checkpoint, weights_only=True)
    raw["metrics"] = {"note": _WritesAMarker(marker)}
    evil = tmp_path / "evil.pt"
    torch.save(raw, evil)
    repository = tmp_path / "repo"
    line = one_error_line(export(runner, evil, repository))
    assert "weights_only=True" in line
    assert "needs code to be unpickled" in line
    assert not marker.exists()
    assert tree(repository) == []


def test_a_checkpoint_naming_code_as_its_architecture_is_refused_before_it_runs(
    runner, digits_checkpoint: Path, tmp_path: Path
):
    """Plain data (no pickle) that names ``subprocess:run`` as the factory and its arguments
    as ``arch_config``: export must not import and call it."""
    marker = tmp_path / "code-ran"
    evil = rewrite(
        digits_checkpoint,
        tmp_path / "arch.pt",
        lambda raw: raw.update(arch="subprocess:run", arch_config={"args": ["touch", str(marker)]}),
    )
    repository = tmp_path / "repo"
    line = one_error_line(export(runner, evil, repository))
    assert "names the architecture 'subprocess:run', an import path" in line
    assert "pass --arch subprocess:run if you trust it" in line
    assert not marker.exists()
    assert tree(repository) == []


def test_places_that_cannot_be_written_are_refused_before_the_work(
    runner, digits_checkpoint: Path, tmp_path: Path
):
    file_as_repository = tmp_path / "a-file"
    file_as_repository.write_text("not a directory")
    file_as_model_dir = tmp_path / "repo-with-file"
    file_as_model_dir.mkdir()
    (file_as_model_dir / "digits").write_text("not a directory")
    for repository, needle in [
        (file_as_repository, "exists and is not a directory"),
        (file_as_model_dir, "digits is not a directory"),
        (Path("/proc/normserve-test-repository"), "cannot write to /proc/normserve-test"),
        (Path("/sys/normserve-test-repository"), "cannot write to /sys/normserve-test"),
    ]:
        result = export(runner, digits_checkpoint, repository, "--name", "digits")
        assert needle in one_error_line(result)
    assert file_as_repository.read_text() == "not a directory"
    assert tree(file_as_model_dir) == ["digits"]


def _failing_writer(written: list[Path]):
    """Writes half of each file, then fails as a full disk does."""

    def write(path: Path, data: bytes) -> None:
        written.append(path)
        with path.open("wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def _config(onnx_bytes: bytes, version: int) -> export_repository.ModelConfig:
    spec = (export_repository.TensorSpec("x", "FP32", (-1, 1)),)
    return export_repository.ModelConfig(
        name="m",
        version=version,
        inputs=spec,
        outputs=spec,
        max_batch_size=1,
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
    )


def test_a_disk_filling_up_mid_write_leaves_no_entry_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch
):
    """write_entry directly: a new version leaves nothing, a --force replacement leaves the
    entry it was replacing byte for byte."""
    repository = tmp_path / "repo"
    old = repository / "m" / "1"
    export_repository.write_entry(old, b"old onnx", _config(b"old onnx", 1), force=False)
    before = {p: p.read_bytes() for p in old.iterdir()}
    written: list[Path] = []
    monkeypatch.setattr(export_repository, "_write_file", _failing_writer(written))
    for target, force in [(repository / "m" / "2", False), (old, True)]:
        with pytest.raises(RepositoryError, match="No space left on device"):
            export_repository.write_entry(
                target, b"new onnx" * 100, _config(b"new onnx" * 100, 9), force=force
            )
    assert written  # the writer was reached and failed mid-file
    assert tree(repository) == ["m", "m/1", "m/1/model.json", "m/1/model.onnx"]
    with pytest.raises(RepositoryError, match="No space left on device"):
        export_repository.write_entry(
            tmp_path / "new" / "m" / "1", b"x", _config(b"x", 1), force=False
        )
    assert not (tmp_path / "new").exists()
    assert {p: p.read_bytes() for p in old.iterdir()} == before


def test_the_cli_reports_a_full_disk_in_one_line_and_writes_nothing(
    runner, digits_checkpoint: Path, tmp_path: Path, monkeypatch
):
    repository = tmp_path / "repo"
    written: list[Path] = []
    monkeypatch.setattr(export_repository, "_write_file", _failing_writer(written))
    line = one_error_line(export(runner, digits_checkpoint, repository, "--name", "digits"))
    assert "No space left on device" in line
    assert written
    assert tree(repository) == []  # not even the directories it created


def test_an_existing_version_is_not_replaced_without_force(
    runner, digits_repository: Path, digits_checkpoint: Path, tmp_path: Path
):
    import shutil

    repository = tmp_path / "repo"
    shutil.copytree(digits_repository, repository)
    before = {p: p.read_bytes() for p in (repository / "digits" / "1").iterdir()}
    result = export(runner, digits_checkpoint, repository, "--name", "digits", "--version", "1")
    assert "already exists; pass --force" in one_error_line(result)
    assert {p: p.read_bytes() for p in (repository / "digits" / "1").iterdir()} == before
    assert json.loads((repository / "digits" / "1" / "model.json").read_text())["version"] == 1


# --- the options that describe a user's model (issue 11) ---------------------------------------


@pytest.fixture
def training_dict(tmp_path: Path) -> Path:
    """A usual training checkpoint of a user architecture: two readings that both load."""
    from tests.export.user_models import trained_tiny_net

    state = trained_tiny_net(width=4, classes=3).state_dict()
    path = tmp_path / "training.pt"
    torch.save({"epoch": 2, "model_state_dict": state, "ema_state_dict": state}, path)
    return path


USER = ["--arch", "tests.export.user_models:tiny_net", "--arch-config", '{"width": 4}']


SHAPE = ["--input-shape", "3,8,8"]
KEY = ["--state-dict-key", "model_state_dict"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (SHAPE, "2 readings of the checkpoint load strictly"),
        ([*SHAPE, "--state-dict-key", "weights"], "--state-dict-key 'weights' is not in"),
        ([*SHAPE, "--state-dict-key", "epoch"], "is not a dict of parameter names to tensors"),
        ([*SHAPE, "--strip-prefix", "backbone."], "--strip-prefix 'backbone.': no key"),
        ([*KEY, "--input", "image"], "--input must be NAME:SHAPE or NAME:SHAPE:DTYPE"),
        ([*KEY, "--input", "image:3,x,8"], "--input image:3,x,8 must be comma-separated"),
        ([*KEY, "--input", "image:3,8,8:float8"], "dtype 'float8' is not supported"),
        ([*KEY, *SHAPE, "--input", "image:3,8,8"], "not both"),
        ([*KEY, *SHAPE, "--dynamic-axes", "image:0"], "--dynamic-axes must be"),
        ([*KEY, *SHAPE, "--dynamic-axes", "x:2"], "--dynamic-axes x: no such input"),
        ([*KEY, *SHAPE, "--dynamic-axes", "4"], "dynamic axis 4 is not an axis"),
        ([*KEY, *SHAPE, "--input-names", "a,b"], "--input-names gives 2 name(s)"),
        ([*KEY, *SHAPE, "--output-names", "a,b"], "2 output name(s) given"),
        ([*KEY, *SHAPE, "--output-names", "9x"], "output name '9x' is not usable"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_options_describing_the_model_are_one_line_and_write_nothing(
    runner, training_dict: Path, tmp_path: Path, extra: list[str], needle: str
):
    repository = tmp_path / "repo"
    line = one_error_line(export(runner, training_dict, repository, *USER, *extra))
    assert needle in line
    assert tree(repository) == []


def test_bad_labels_and_sample_files_are_one_line(runner, training_dict: Path, tmp_path: Path):
    import numpy as np

    repository = tmp_path / "repo"
    base = [*USER, "--state-dict-key", "model_state_dict", "--input-shape", "3,8,8"]
    empty, wrong_count, not_json = (
        tmp_path / "empty.txt",
        tmp_path / "four.txt",
        tmp_path / "l.json",
    )
    empty.write_text("\n  \n")
    wrong_count.write_text("a\nb\nc\nd\n")
    not_json.write_text("{nope")
    pickled, misnamed, misshaped = (tmp_path / n for n in ("p.npz", "m.npz", "s.npz"))
    np.savez(pickled, input=np.array([{"code": 1}], dtype=object))
    np.savez(misnamed, image=np.zeros((4, 3, 8, 8), np.float32), other=np.zeros((4, 1)))
    np.savez(misshaped, input=np.zeros((4, 3, 9, 8), np.float32))
    cases = [
        (["--labels", str(empty)], "holds no labels"),
        (["--labels", str(wrong_count)], "4 labels for the 3 classes of output 'output'"),
        (["--labels", str(not_json)], "not JSON"),
        (["--labels", str(tmp_path / "missing.txt")], "cannot read"),
        (["--sample-inputs", str(pickled)], "not a readable .npz of arrays"),
        (["--sample-inputs", str(misnamed)], "not the inputs ['input']"),
        (["--sample-inputs", str(misshaped)], "has samples of shape [3, 9, 8], the input takes"),
        (["--sample-inputs", str(tmp_path / "none.npz")], "not a readable .npz"),
    ]
    for extra, needle in cases:
        line = one_error_line(export(runner, training_dict, repository, *base, *extra))
        assert needle in line, (extra, line)
        assert tree(repository) == []
