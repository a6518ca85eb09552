"""What the command line tells about itself: its version, the architectures it can train, and
shell completion (commands, options and architecture names)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normserve.cli import app
from normserve.models.registry import list_architectures

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_version_prints_the_distribution_version(runner: CliRunner):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = runner.invoke(app, ["--version"], prog_name="normserve")
    assert result.exit_code == 0, result.output
    assert result.output == f"normserve {declared}\n"


def test_train_help_lists_every_registered_architecture(runner: CliRunner):
    result = runner.invoke(app, ["train", "--help"], prog_name="normserve", terminal_width=200)
    assert result.exit_code == 0, result.output
    names = list_architectures()
    assert len(names) >= 5
    for name in names:
        assert name in result.output, name


def test_completion_is_offered(runner: CliRunner):
    help_text = runner.invoke(app, ["--help"], prog_name="normserve", terminal_width=200).output
    assert "--install-completion" in help_text
    assert "--show-completion" in help_text
    script = runner.invoke(app, ["--show-completion", "bash"], prog_name="normserve")
    assert script.exit_code == 0, script.output
    assert "_NORMSERVE_COMPLETE=complete_bash" in script.output
    assert "complete -o default -F _normserve_completion normserve" in script.output


def _complete(runner: CliRunner, words: str) -> list[str]:
    """What bash completion offers for the last (partial) word of ``words``."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    result = runner.invoke(
        app,
        [],
        prog_name="normserve",
        env={"_NORMSERVE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)},
    )
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_completion_knows_commands_and_architectures(runner: CliRunner):
    assert _complete(runner, "normserve tr") == ["train"]
    assert _complete(runner, "normserve train --arch ") == list_architectures()
    assert _complete(runner, "normserve train --arch res") == ["resnet_cifar"]
