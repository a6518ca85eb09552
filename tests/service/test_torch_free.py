"""The serving side never imports torch, models or export (the serving image has no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import normserve.service as service

FORBIDDEN = ("torch", "normserve.models", "normserve.export")


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_no_forbidden_import_statement_in_service():
    offenders = []
    for path in Path(service.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if _forbidden(n)]
    assert offenders == []


def test_service_serves_a_real_export_with_torch_absent(digits_repository: Path):
    script = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from normserve.service import Settings, create_app
        from normserve.cli import app as cli_app  # the CLI module must stay torch-free too

        settings = Settings(repository={str(digits_repository)!r}, provider="cpu")
        with TestClient(create_app(settings)) as client:
            assert client.get("/v2/health/ready").status_code == 200
            body = {{"inputs": [{{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                 "data": [0.0] * 64}}]}}
            response = client.post("/v2/models/digits/infer", json=body)
            assert response.status_code == 200, response.text
        forbidden = {FORBIDDEN!r}
        loaded = sorted(
            m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)
        )
        print("FORBIDDEN:", loaded)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "FORBIDDEN: []" in result.stdout, result.stdout
