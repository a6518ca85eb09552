from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from normserve.service import Settings, create_app
from tests.service.fake_models import write_entry


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """``affine`` versions 1 and 2 (version 2 doubles W) and ``other`` version 1."""
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    write_entry(root, "affine", 2)
    write_entry(root, "other", 1)
    return root


@pytest.fixture
def settings(repository: Path) -> Settings:
    return Settings(repository=repository, provider="cpu", intra_op_threads=1)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c
