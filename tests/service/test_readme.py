"""The serving documentation against the server: docs/settings.md lists every setting as the
code generates it, and every example of docs/serving.md runs as written against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from normserve.service.settings import Settings, settings_table
from tests.docs.pages import DOCS, Example, examples_run_by
from tests.service.process import Server, running_server

SERVING = DOCS / "serving.md"
SETTINGS = DOCS / "settings.md"
RUNNER = "tests/service/test_readme.py"


def examples() -> list[Example]:
    """The examples of the documentation this module runs."""
    return examples_run_by(RUNNER)


def test_every_example_here_is_on_the_serving_page():
    assert all(e.page == SERVING for e in examples())


def test_settings_page_lists_every_setting_as_generated():
    text = SETTINGS.read_text()
    for name in Settings.model_fields:
        assert f"`NORMSERVE_{name.upper()}`" in text, name
    table = settings_table()
    assert table in text, (
        "docs/settings.md's table differs from the code; paste this between its settings "
        f"markers:\n{table}"
    )


@pytest.fixture(scope="module")
def server(digits_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("readme") / "server.log"
    with running_server(digits_repository, log, {"NORMSERVE_ADMIN_KEY": "change-me"}) as s:
        yield s


def as_written(example: str, server: Server) -> str:
    """The example aimed at the test's server (port) and this interpreter (numpy, tritonclient)."""
    return example.replace("127.0.0.1:8000", server.host_port).replace(
        ".venv/bin/python", sys.executable
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_shell_examples_run_as_written(server: Server):
    shell = [e for e in examples() if e.language == "bash"]
    assert len(shell) >= 5
    for example in shell:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", as_written(example.code, server)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (example.where(), result.stderr)
        assert result.stdout.strip(), example.where()
        assert '"error"' not in result.stdout, (example.where(), result.stdout)


def test_tritonclient_example_runs_as_written(server: Server):
    (example,) = [e for e in examples() if e.language == "python"]
    result = subprocess.run(
        [sys.executable, "-c", as_written(example.code, server)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "64"  # max_batch_size from /config
    assert lines[1].startswith("batch-7 [")  # the request id came back


def test_every_setting_named_on_the_serving_page_exists():
    for name in re.findall(r"NORMSERVE_([A-Z_]+)", SERVING.read_text()):
        assert name.lower() in Settings.model_fields, name
