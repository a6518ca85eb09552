"""The deploy documentation shows the commands the deploy tests run (tests/deploy/commands.py):
docs/deploy.md the ones a user runs anywhere, docs/contributing.md the ones that stand in for
Docker Hub on the project's own machines (a private engine, a locally built base image)."""

from __future__ import annotations

import pytest

from tests.deploy import commands
from tests.deploy.commands import COMMANDS, README_VALUES
from tests.deploy.conftest import REPO

DEPLOY = REPO / "docs" / "deploy.md"
CONTRIBUTING = REPO / "docs" / "contributing.md"
# The build machines' stand-ins: documented for contributors, never on the user page.
BUILD_MACHINE = {
    commands.ENGINE_DEPS,
    commands.ENGINE_START,
    commands.ENGINE_BASE,
    commands.ENGINE_STOP,
    commands.MAKE_IMAGE,
}


@pytest.mark.parametrize("template", COMMANDS)
def test_docs_show_the_command_the_tests_run(template: str):
    command = template.format(**README_VALUES)
    if template in BUILD_MACHINE:
        assert command in CONTRIBUTING.read_text(encoding="utf-8"), command
        assert command not in DEPLOY.read_text(encoding="utf-8"), command
    else:
        assert command in DEPLOY.read_text(encoding="utf-8"), command


def test_contributors_see_the_whole_sequence_the_image_tests_run():
    text = CONTRIBUTING.read_text(encoding="utf-8")
    sequence = [
        commands.ENGINE_START,
        commands.ENGINE_BASE,
        commands.MAKE_IMAGE,
        commands.RUN_SERVE,
        commands.STOP,
        commands.ENGINE_STOP,
    ]
    positions = [text.index(t.format(**README_VALUES)) for t in sequence]
    assert positions == sorted(positions)
