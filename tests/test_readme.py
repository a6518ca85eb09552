"""README's promises: the two commands first, and a curl example that works as written."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from fastapi.testclient import TestClient

from normserve.service import Settings, create_app

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands():
    first_block = README.read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def _curl_infer_example() -> tuple[str, dict]:
    text = README.read_text()
    match = re.search(r"curl -s -X POST (\S+) \\\n(.*?)```", text, re.S)
    assert match, "README has no curl infer example"
    args = shlex.split(match.group(2).replace("\\\n", " "))
    body = json.loads(args[args.index("-d") + 1])
    return match.group(1), body


def test_readme_curl_example_predicts_a_zero(digits_repository: Path):
    url, body = _curl_infer_example()
    path = url.removeprefix("http://127.0.0.1:8000")
    settings = Settings(repository=digits_repository, provider="cpu")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/health/ready").status_code == 200
        response = client.post(
            path, content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    logits = out["data"]
    assert out["shape"] == [1, 10]
    assert logits.index(max(logits)) == 0
