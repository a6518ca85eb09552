"""One import name: the distribution installs ``normserve`` and nothing else at the top level,
so a user's own ``models``/``export``/``service`` packages never collide with ours."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.service.process import running_server

ROOT = Path(__file__).resolve().parent.parent
# The repository folders installed under the one import package, and where they land.
FOLDERS = {"normserve": "normserve", "models": "normserve.models", "export": "normserve.export"}
FOLDERS["service"] = "normserve.service"


def _source_packages() -> set[str]:
    """Every package in the source folders, named as it is installed."""
    found = set()
    for folder, installed in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((installed, *relative)))
    return found


def test_pyproject_lists_every_source_package():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(tool["packages"]) == _source_packages()
    assert tool["package-dir"] == {v: k for k, v in FOLDERS.items()}


@pytest.mark.slow
def test_wheel_has_one_top_level_package(tmp_path: Path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("normserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"normserve"}
    packaged = {
        n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("__init__.py")
    }
    assert packaged == _source_packages()
    # Package data: Swagger UI's assets, which /docs serves from the installed package.
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"):
        assert f"normserve/service/http/swagger-ui/{asset}" in names, asset
    (record,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
    if record is not None:
        assert zipfile.ZipFile(wheel).read(record).decode().split() == ["normserve"]


USER_MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def make_model(width: int = 6) -> nn.Module:
    return Tiny(width)
"""

# Saved the way people save: a bare state_dict, BN statistics randomized (a fresh BN with mean 0
# and var 1 would prove nothing), negative gammas and tiny variances included.
SAVE = """
import torch
from models.tiny import make_model

torch.manual_seed(0)
model = make_model()
with torch.no_grad():
    model.bn.weight.copy_(torch.randn(6))
    model.bn.weight[0] = -1.5
    model.bn.bias.copy_(torch.randn(6))
    model.bn.running_mean.copy_(torch.randn(6))
    model.bn.running_var.copy_(torch.rand(6) + 0.05)
    model.bn.running_var[1] = 1e-4
torch.save(model.state_dict(), "tiny.pt")
model.eval()
x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
torch.save({"x": x, "y": model(x).detach()}, "expected.pt")
"""


@pytest.mark.slow
def test_user_project_with_its_own_models_package_exports_and_serves(tmp_path: Path):
    project = tmp_path / "project"
    for package in ("models", "export", "service"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(f'"""The user\'s own {package}."""\n')
    (project / "models" / "tiny.py").write_text(textwrap.dedent(USER_MODEL))
    # normserve must never import the user's export/service packages as its own.
    for package in ("export", "service"):
        (project / package / "__init__.py").write_text(
            f"raise ImportError('the user\\'s {package} package was imported by normserve')\n"
        )
    subprocess.run([sys.executable, "-c", SAVE], cwd=project, check=True, timeout=120)

    normserve = str(Path(sys.executable).parent / "normserve")
    repository = tmp_path / "repo"
    exported = subprocess.run(
        [
            *(normserve, "export", "tiny.pt", "--arch", "models.tiny:make_model"),
            *("--input-shape", "3,8,8", "--repository", str(repository), "--name", "tiny"),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert (repository / "tiny" / "1" / "model.onnx").is_file()

    import torch

    expected = torch.load(project / "expected.pt", weights_only=True)
    x, y = expected["x"].numpy(), expected["y"].numpy()
    with running_server(repository, tmp_path / "server.log") as server:
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5)
