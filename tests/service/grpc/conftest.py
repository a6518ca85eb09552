"""One real server for the gRPC tests: HTTP and gRPC, an inference key and an admin key.

Repository: ``affine`` versions 1 and 2 (one input, two outputs; version 2 doubles W) and
``pair`` (two inputs, two outputs). A small body limit (64 KiB) so that over-limit messages are
cheap to send.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from normserve.service.runtime.state import Runtime
from normserve.service.settings import Settings
from tests.service.fake_models import write_entry
from tests.service.grpc.models import write_pair
from tests.service.process import Server, running_server

API_KEY, ADMIN_KEY = "grpc-inference-t0ken", "grpc-admin-t0ken"
MAX_BODY_BYTES = 64 * 1024


def auth() -> dict[str, str]:
    """gRPC metadata keys are lower case (tritonclient passes headers as metadata)."""
    return {"authorization": f"Bearer {API_KEY}"}


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="package")
def grpc_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc") / "repo"
    write_entry(root, "affine", 1, max_batch_size=16)
    write_entry(root, "affine", 2, max_batch_size=16)
    write_pair(root, max_batch_size=16)
    return root


@pytest.fixture(scope="package")
def grpc_server(
    grpc_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {
        "NORMSERVE_API_KEY": API_KEY,
        "NORMSERVE_ADMIN_KEY": ADMIN_KEY,
        "NORMSERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "NORMSERVE_INTRA_OP_THREADS": "1",
    }
    log = tmp_path_factory.mktemp("grpc-log") / "server.log"
    with running_server(grpc_repository, log, env, grpc=True) as server:
        yield server


@pytest.fixture(scope="package")
def client(grpc_server: Server) -> Iterator[triton.InferenceServerClient]:
    assert grpc_server.grpc_target is not None
    c = triton.InferenceServerClient(grpc_server.grpc_target)
    yield c
    c.close()


@pytest.fixture(scope="package")
def runtime(grpc_repository: Path) -> Runtime:
    """The same repository loaded in-process, for the codec's own tests."""
    loaded = Runtime(Settings(repository=grpc_repository, provider="cpu", intra_op_threads=1))
    loaded.load_repository()
    return loaded
