"""README's serving section: every setting listed, every example runs as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from normserve.service.settings import Settings, settings_table
from tests.service.process import Server, running_server

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Serving: HTTP API and configuration"


def serving_section() -> str:
    text = README.read_text()
    assert HEADING in text, f"README has no {HEADING!r} section"
    section = text.split(HEADING, 1)[1]
    following = re.search(r"^## ", section, flags=re.MULTILINE)
    return section[: following.start()] if following else section


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", serving_section(), re.DOTALL | re.MULTILINE)


def test_readme_lists_every_setting_as_generated():
    section = serving_section()
    for name in Settings.model_fields:
        assert f"`NORMSERVE_{name.upper()}`" in section, name
    assert settings_table() in section  # defaults and docs as the code has them


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
def test_curl_examples_run_as_written(server: Server):
    examples = [b for b in blocks("bash") if "normserve serve" not in b]
    assert len(examples) >= 5
    for example in examples:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", as_written(example, server)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (example, result.stderr)
        assert result.stdout.strip(), example
        assert '"error"' not in result.stdout, (example, result.stdout)


def test_tritonclient_example_runs_as_written(server: Server):
    (example,) = blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", as_written(example, server)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "64"  # max_batch_size from /config
    assert lines[1].startswith("batch-7 [")  # the request id came back
