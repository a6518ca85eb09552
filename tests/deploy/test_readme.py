"""README's "Deploy" section shows the commands the deploy tests run (tests/deploy/commands.py)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.commands import COMMANDS, README_VALUES
from tests.deploy.conftest import REPO


def deploy_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Deploy\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, 'README.md has no "## Deploy" section'
    return match.group(1)


@pytest.mark.parametrize("template", COMMANDS)
def test_readme_shows_the_command_the_tests_run(template: str):
    command = template.format(**README_VALUES)
    assert command in deploy_section(), f"README's Deploy section lacks: {command}"
