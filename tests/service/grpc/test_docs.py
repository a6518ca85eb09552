"""docs/grpc.md's examples, run: the client against a real server holding the digits model, and
the stub generator (with --check, so the test never rewrites the source tree)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.service.process import Server, running_server

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "grpc.md"
RUNNER = "tests/service/grpc/test_docs.py"
_BLOCK = re.compile(
    rf"^<!-- example: run by {re.escape(RUNNER)} -->\n```(\w+)\n(.*?)^```$", re.M | re.S
)


def blocks() -> dict[str, str]:
    """This module's examples of the page, by language."""
    found = {language: code for language, code in _BLOCK.findall(PAGE.read_text())}
    assert set(found) == {"python", "bash"}, found
    return found


def examples() -> list:
    """For the documentation tests (tests/docs): the examples this module runs."""
    from tests.docs.pages import examples_run_by

    return examples_run_by(RUNNER)


@pytest.fixture(scope="module")
def digits_server(
    digits_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("grpc-docs") / "server.log"
    env = {"NORMSERVE_API_KEY": "my-api-key"}
    with running_server(digits_repository, log, env, grpc=True) as server:
        yield server


def test_the_client_example_runs_and_prints_the_models_classes(
    digits_server: Server, digits_repository: Path, capsys: pytest.CaptureFixture[str]
):
    code = blocks()["python"]
    assert "localhost:8001" in code
    exec(compile(code.replace("localhost:8001", digits_server.grpc_target), str(PAGE), "exec"), {})
    printed = capsys.readouterr().out.strip()
    # The same inputs through ONNX Runtime directly: the classes the page prints.
    session = ort.InferenceSession(
        str(digits_repository / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (spec,) = session.get_inputs()
    x = np.random.default_rng(0).uniform(0, 16, size=(4, *spec.shape[1:])).astype(np.float32)
    (logits,) = session.run(None, {spec.name: x})
    assert printed == str(logits.argmax(axis=1))


def test_the_generator_command_is_the_one_that_keeps_the_stubs():
    (command,) = [line for line in blocks()["bash"].splitlines() if line.strip()]
    words = shlex.split(command)
    assert words[0] == "python"
    result = subprocess.run(
        [sys.executable, *words[1:], "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
