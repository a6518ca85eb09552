"""docs/cli.md: its examples run as written, and it names every option the commands have."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from normserve.cli import app
from normserve.service.settings import Settings
from tests.docs.pages import DOCS, ROOT, Example, examples_run_by

PAGE = DOCS / "cli.md"
RUNNER = "tests/docs/test_cli_page.py"


def examples() -> list[Example]:
    """The examples of the documentation this module runs."""
    return examples_run_by(RUNNER)


def run_as_written(example: Example, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The example in bash, with this environment's ``normserve`` first on PATH (as after
    ``source .venv/bin/activate``)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example.code],
        cwd=cwd,
        env={**os.environ, "PATH": path, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _example(containing: str) -> Example:
    (found,) = [e for e in examples() if containing in e.code]
    return found


def test_every_example_here_is_on_the_page():
    assert len(examples()) == 2
    assert all(e.page == PAGE for e in examples())


def test_checkpoint_to_repository_runs_as_written(tmp_path: Path):
    result = run_as_written(_example("normserve export"), tmp_path)
    assert result.returncode == 0, result.stderr
    entry = tmp_path / "model_repository" / "digits" / "1"
    assert (entry / "model.onnx").is_file()
    assert (entry / "model.json").is_file()
    assert (tmp_path / "checkpoints" / "digits_cnn.pt").is_file()
    assert f"verified {Path('model_repository/digits/1')}" in result.stdout


def test_version_and_completion_run_as_written(tmp_path: Path):
    result = run_as_written(_example("--version"), tmp_path)
    assert result.returncode == 0, result.stderr
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    lines = result.stdout.splitlines()
    assert lines[0] == f"normserve {version}"
    assert "complete -o default -F _normserve_completion normserve" in result.stdout


def _named(option: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _options(command: str) -> set[str]:
    group = typer.main.get_command(app)
    ctx = typer.Context(group)
    cmd = group.get_command(ctx, command)  # type: ignore[attr-defined]
    names = set()
    for param in cmd.get_params(typer.Context(cmd, parent=ctx)):
        if param.param_type_name == "option":
            names.update(o for o in param.opts if o.startswith("--") and o != "--help")
    return names


@pytest.mark.parametrize("command", ["train", "export", "verify"])
def test_page_names_every_option(command: str):
    text = PAGE.read_text()
    missing = {o for o in _options(command) if not _named(o, text)}
    assert not missing, f"docs/cli.md does not describe {command} {sorted(missing)}"


def test_serve_options_are_on_the_page_or_are_settings():
    text = PAGE.read_text()
    settings = {"--" + name.replace("_", "-") for name in Settings.model_fields}
    missing = {o for o in _options("serve") - settings if not _named(o, text)}
    assert not missing, f"docs/cli.md does not describe serve {sorted(missing)}"


def test_options_the_page_shows_exist():
    synopsis = re.search(r"```text\n(.*?)```", PAGE.read_text(), re.S).group(1)
    for line in synopsis.splitlines():
        command = re.match(r"normserve (\w+)", line.strip())
        if command:
            current = command.group(1)
        for option in re.findall(r"\[(--[a-z-]+)", line):
            assert option in _options(current), f"normserve {current} has no {option}"
