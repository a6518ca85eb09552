"""README's promises: the two commands first, a quick start that works as written, the API in
ten lines that the server really has, and a link to every documentation page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from normserve.service import Settings, create_app
from tests.docs.pages import DOCS, README, ROOT, Example, examples_run_by, nav_pages, section
from tests.service.process import running_server

RUNNER = "tests/test_readme.py"


def examples() -> list[Example]:
    """The examples of README this module runs."""
    return examples_run_by(RUNNER)


def _example(containing: str) -> Example:
    (found,) = [e for e in examples() if containing in e.code]
    return found


def run_as_written(code: str, host_port: str = "127.0.0.1:8000") -> subprocess.CompletedProcess:
    """``code`` in bash, aimed at ``host_port`` and at this environment's .venv/bin."""
    code = code.replace("127.0.0.1:8000", host_port).replace(
        ".venv/bin/", f"{Path(sys.executable).parent}/"
    )
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_documents(text: str) -> list:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        document, at = decoder.raw_decode(text, at)
        found.append(document)
        while at < len(text) and text[at].isspace():
            at += 1
    return found


def test_readme_starts_with_the_two_commands():
    first_block = README.read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def test_every_example_here_is_in_readme():
    assert len(examples()) == 2
    assert all(e.page == README for e in examples())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_quick_start_predicts_a_zero_as_written(digits_repository: Path, tmp_path: Path):
    example = _example("/v2/models/digits/infer")
    with running_server(digits_repository, tmp_path / "server.log") as server:
        result = run_as_written(example.code, server.host_port)
    assert result.returncode == 0, result.stderr
    ready, answer = _json_documents(result.stdout)  # curl adds no newline between them
    assert ready == {"ready": True}
    shown = json.loads(re.search(r"```json\n(.*?)```", README.read_text(), re.S).group(1))
    assert answer.keys() == shown.keys()
    assert (answer["model_name"], answer["model_version"]) == ("digits", "1")
    (out,) = answer["outputs"]
    assert {k: out[k] for k in ("name", "datatype", "shape")} == {
        k: shown["outputs"][0][k] for k in ("name", "datatype", "shape")
    }
    logits = out["data"]
    assert logits.index(max(logits)) == 0  # the label "0", as README says


def test_command_line_examples_run_as_written():
    result = run_as_written(_example("--version").code)
    assert result.returncode == 0, result.stderr
    assert re.match(r"normserve \d+\.\d+", result.stdout)
    assert "digits_cnn" in result.stdout  # train --help lists the architectures


def _api_lines() -> list[tuple[str, str]]:
    block = re.search(r"```text\n(.*?)```", section(README, "## The API in ten lines"), re.S)
    return [tuple(line.split()[:2]) for line in block.group(1).splitlines() if line.strip()]


def test_the_api_in_ten_lines_is_the_server_s(digits_repository: Path):
    lines = _api_lines()
    assert len(lines) == 10
    app = create_app(Settings(repository=digits_repository, provider="cpu"))
    routes = {
        (method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    with TestClient(app) as client:  # routes outside the OpenAPI document (Swagger UI)
        for method, path in lines:
            if (method, re.sub(r"\{[^}]*\}", "{}", path)) not in routes:
                assert method == "GET", (method, path)
                assert "{" not in path, (method, path)
                assert client.get(path).status_code == 200, (method, path)


def test_readme_links_to_every_documentation_page():
    links = re.findall(r"\]\(docs/([^)#]+)\)", README.read_text())
    for link in links:
        assert (DOCS / link).is_file(), link
    assert set(nav_pages()) <= set(links)
