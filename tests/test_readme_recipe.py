"""README's "Your own model" recipe, run as written from a scratch project.

The project has its own top-level ``models/`` package (as most PyTorch projects do) and lies
outside this repository; the commands run with the environment's bin/ first on PATH, as
``source .venv/bin/activate`` puts it. Python blocks whose first line is ``# PATH`` are that
file; bash blocks run in order; the ``normserve serve`` block starts the server in the
background on a free port (the only change to the text: 127.0.0.1:8000 becomes that port).
The served scores are then compared with the eager model loaded from the saved checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.docs.pages import README, Example, examples_run_by
from tests.service.process import free_port, wait_until

RUNNER = "tests/test_readme_recipe.py"
BIN = Path(sys.executable).parent


def examples() -> list[Example]:
    """The examples of README this module runs."""
    return examples_run_by(RUNNER)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _file_of(example: Example) -> str | None:
    first = example.code.splitlines()[0]
    match = re.fullmatch(r"# (\S+\.py)", first)
    return match.group(1) if example.language == "python" and match else None


def _bash(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


EAGER = """
import json, sys
import numpy as np
import torch
from models.brightness import build

checkpoint = torch.load("brightness.pt", weights_only=True)
model = build(classes=3)
model.load_state_dict(checkpoint["model_state_dict"])
model.eval().double()
image = torch.from_numpy(np.load("samples.npz")["image"][:2]).double()
with torch.no_grad():
    print(json.dumps(model(image).tolist()))
"""


def test_every_example_of_the_section_is_run_here():
    """Every block under "## Your own model" is this module's, and nothing else is."""
    text = README.read_text()  # not section(): the blocks' "# PATH" lines look like headings
    recipe = text[text.index("## Your own model") : text.index("## The API in ten lines")]
    assert all(e.page == README for e in examples())
    assert [e.code for e in examples()] == [
        m.group(2) for m in re.finditer(r"^```(bash|python)\n(.*?)^```$", recipe, re.S | re.M)
    ]
    assert [_file_of(e) for e in examples() if e.language == "python"] == [
        "models/brightness.py",
        "train.py",
        "call.py",
    ]


def test_the_recipe_runs_as_written_and_serves_what_eager_computes(tmp_path: Path):
    project = tmp_path / "my_project"
    project.mkdir()
    port = free_port()
    server: subprocess.Popen | None = None
    output = ""
    try:
        for example in examples():
            code = example.code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            path = _file_of(example)
            if path is not None:
                (project / path).write_text(code)
                continue
            if "normserve serve" in code:
                (command,) = [line for line in code.splitlines() if line.strip()]
                words = shlex.split(command.split(" #")[0].replace("8000", str(port)))
                assert words[0] == "normserve"
                with (tmp_path / "server.log").open("w") as log:
                    server = subprocess.Popen(
                        [str(BIN / "normserve"), *words[1:]],
                        cwd=project,
                        env={**_env(), "NORMSERVE_PROVIDER": "cpu"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                wait_until(
                    lambda: (
                        httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
                    ),
                    60,
                    "the recipe's server is ready",
                    server,
                )
                continue
            done = _bash(code, project)
            assert done.returncode == 0, f"{example.where()}:\n{done.stdout}\n{done.stderr}"
            output = done.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    assert server is not None, "the recipe never started a server"
    served = json.loads(output.strip().splitlines()[-1])
    assert (served["name"], served["datatype"], served["shape"]) == ("scores", "FP32", [2, 3])
    eager = subprocess.run(
        [sys.executable, "-c", EAGER], cwd=project, capture_output=True, text=True, check=True
    )
    reference = np.array(json.loads(eager.stdout))
    got = np.array(served["data"]).reshape(2, 3)
    # float32 serving against float64 eager: a few float32 epsilons of the scale.
    assert np.abs(got - reference).max() <= 1e-5 * max(1.0, np.abs(reference).max())
    entry = json.loads((project / "model_repository/brightness/1/model.json").read_text())
    assert entry["labels"] == ["dark", "grey", "bright"]
    export = entry["export"]
    assert export["checkpoint"]["state_dict_key"] == "model_state_dict"
    assert export["normalization"]["folded_total"] == 2
    assert export["parity"]["random_inputs"] is False


@pytest.mark.parametrize("block", ["models/brightness.py", "train.py", "call.py"])
def test_the_recipe_s_python_is_formatted(block: str):
    """The Python a user copies is valid (compiles) and has no tab or trailing space."""
    (example,) = [e for e in examples() if _file_of(e) == block]
    compile(example.code, block, "exec")
    assert not any(line != line.rstrip() or "\t" in line for line in example.code.splitlines())
