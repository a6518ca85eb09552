"""The command line through typer's runner: success output, and one line on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normserve.cli import app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_train_export_verify(runner: CliRunner, tmp_path: Path):
    checkpoint = tmp_path / "ck" / "digits.pt"
    result = runner.invoke(app, ["train", "--epochs", "2", "--seed", "2", "--out", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output
    assert checkpoint.is_file()

    repo = tmp_path / "repo"
    result = runner.invoke(
        app, ["export", str(checkpoint), "--repository", str(repo), "--name", "digits"]
    )
    assert result.exit_code == 0, result.output
    assert "folded: conv2d+bn 2, linear+bn 1" in result.output
    assert "BatchNormalization nodes: 0 exported, 0 after ORT optimization" in result.output
    assert "proof: error <= 8 x eager's error + 16 eps x scale, against float64" in result.output
    assert "ONNX Runtime CPU: ok" in result.output
    assert f"wrote {repo / 'digits' / '1'}" in result.output
    assert json.loads((repo / "digits" / "1" / "model.json").read_text())["version"] == 1

    result = runner.invoke(
        app, ["verify", str(repo / "digits" / "1"), "--checkpoint", str(checkpoint)]
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.output


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_export_of_missing_checkpoint_is_one_line(runner: CliRunner, tmp_path: Path):
    line = _one_error_line(
        runner.invoke(
            app, ["export", str(tmp_path / "nope.pt"), "--repository", str(tmp_path / "r")]
        )
    )
    assert "does not exist" in line
    assert not (tmp_path / "r").exists()


def test_export_of_corrupt_checkpoint_is_one_line(runner: CliRunner, tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    line = _one_error_line(
        runner.invoke(app, ["export", str(bad), "--repository", str(tmp_path / "r")])
    )
    assert "not a readable torch file" in line
    assert not (tmp_path / "r").exists()


def test_bad_input_shape_option(runner: CliRunner, digits_checkpoint: Path, tmp_path: Path):
    line = _one_error_line(
        runner.invoke(
            app,
            [
                "export",
                str(digits_checkpoint),
                "--input-shape",
                "1,x,8",
                "--repository",
                str(tmp_path),
            ],
        )
    )
    assert "--input-shape must be comma-separated integers" in line


def test_export_into_unwritable_place_is_one_line(
    runner: CliRunner, digits_checkpoint: Path, tmp_path: Path
):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = _one_error_line(
        runner.invoke(app, ["export", str(digits_checkpoint), "--repository", str(blocker)])
    )
    assert "not a directory" in line
    assert blocker.read_text() == "not a directory"


def test_verify_refuses_another_checkpoint(
    runner: CliRunner, digits_checkpoint: Path, digits_repository: Path, tmp_path: Path
):
    other = tmp_path / "other.pt"
    assert (
        runner.invoke(app, ["train", "--epochs", "1", "--seed", "9", "--out", str(other)]).exit_code
        == 0
    )
    line = _one_error_line(
        runner.invoke(
            app, ["verify", str(digits_repository / "digits" / "1"), "--checkpoint", str(other)]
        )
    )
    assert "is not the checkpoint" in line


def test_serve_with_invalid_setting_is_one_line(runner: CliRunner, tmp_path: Path):
    line = _one_error_line(
        runner.invoke(app, ["serve", "--repository", str(tmp_path), "--port", "70000"])
    )
    assert "invalid setting port" in line


def test_train_unknown_arch_is_one_line(runner: CliRunner, tmp_path: Path):
    line = _one_error_line(
        runner.invoke(app, ["train", "--arch", "nope", "--out", str(tmp_path / "x.pt")])
    )
    assert "arch 'nope' is not registered" in line


def test_train_a_registry_architecture_to_its_default_path(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--arch", "conv_decoder", "--max-steps", "5"])
    assert result.exit_code == 0, result.output
    assert "validation relative MSE" in result.output
    assert (tmp_path / "checkpoints" / "conv_decoder.pt").is_file()
    assert "wrote checkpoints/conv_decoder.pt" in result.output


def test_export_and_verify_a_user_architecture_from_a_bare_state_dict(
    runner: CliRunner, tmp_path: Path
):
    import torch

    from tests.export.user_models import trained_tiny_net

    state = tmp_path / "tiny.pt"
    torch.save(trained_tiny_net(width=5, classes=3).state_dict(), state)
    repo = tmp_path / "repo"
    result = runner.invoke(
        app,
        [
            "export",
            str(state),
            "--arch",
            "tests.export.user_models:tiny_net",
            "--arch-config",
            '{"width": 5}',
            "--input-shape",
            "3,8,8",
            "--repository",
            str(repo),
            "--name",
            "tiny",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "folded: bn+conv2d 1, conv2d+bn 1, linear+bn 1" in result.output
    assert "reference evaluator: ok" in result.output
    assert "CUDA: " in result.output
    assert f"wrote {repo / 'tiny' / '1'}" in result.output

    verify = ["verify", str(repo / "tiny" / "1"), "--checkpoint", str(state)]
    line = _one_error_line(runner.invoke(app, verify))  # model.json names code: not run
    assert "pass --arch tests.export.user_models:tiny_net if you trust it" in line
    result = runner.invoke(app, [*verify, "--arch", "tests.export.user_models:tiny_net"])
    assert result.exit_code == 0, result.output
    assert "BatchNormalization nodes: 0 exported, 0 after ORT optimization" in result.output
    assert "golden probe: reproduced" in result.output
    assert f"verified {repo / 'tiny' / '1'}" in result.output


def test_bad_arch_config_is_one_line(runner: CliRunner, digits_checkpoint: Path, tmp_path: Path):
    args = ["export", str(digits_checkpoint), "--arch-config", "[1]", "--repository", str(tmp_path)]
    line = _one_error_line(runner.invoke(app, args))
    assert "--arch-config must be a JSON object" in line


def test_batch_norm_without_running_stats_is_one_line(runner: CliRunner, tmp_path: Path):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    state = tmp_path / "no_stats.pt"
    torch.save(model.state_dict(), state)
    line = _one_error_line(
        runner.invoke(
            app,
            [
                "export",
                str(state),
                "--arch",
                "tests.normserve.test_cli:no_stats_model",
                "--input-shape",
                "3,6,6",
                "--repository",
                str(tmp_path / "r"),
            ],
        )
    )
    assert "track_running_stats=False" in line
    assert "depends on the other samples" in line
    assert not (tmp_path / "r").exists()


def no_stats_model() -> object:
    """Factory for the refusal test above (importable as tests.normserve.test_cli:...)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
