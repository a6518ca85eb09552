"""One real ``normserve serve`` for the hostile-input tests, and the check that it is still
healthy after each of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import orjson
import pytest
from hypothesis import settings

from tests.service.fake_models import affine_reference, write_entry
from tests.service.process import Server, running_server

# Property-based tests here are derandomized and keep no example database in the checkout.
settings.register_profile("reliability", database=None, derandomize=True, deadline=None)
settings.load_profile("reliability")

RTOL, ATOL = 1e-6, 1e-6
MAX_BODY_BYTES = 65536
API_KEY, ADMIN_KEY = "reliability-inference-key", "reliability-admin-key"


def port_of(server: Server) -> int:
    return int(server.host_port.rsplit(":", 1)[1])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_healthy(server: Server, headers: dict[str, str] | None = None) -> None:
    """Ready, answering a correct inference, and nothing in the log that looks like a bug."""
    assert server.proc.poll() is None, "the server died"
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=5.0).status_code == 200
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]], np.float32)
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.tolist()}]}
    response = httpx.post(
        f"{server.url}/v2/models/affine/versions/1/infer", json=body, headers=headers, timeout=5.0
    )
    assert response.status_code == 200, response.text
    y = np.array(response.json()["outputs"][0]["data"]).reshape(2, 2)
    np.testing.assert_allclose(y, affine_reference(x, 1)[0], rtol=RTOL, atol=ATOL)
    log = server.log()
    for needle in ("Traceback", "internal error", " 500 ", "status=500"):
        assert needle not in log, log[-3000:]


@pytest.fixture(scope="session")
def hostile_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``affine`` versions 1 and 2 (at most 8 samples a request)."""
    root = tmp_path_factory.mktemp("hostile") / "repo"
    write_entry(root, "affine", 1)
    write_entry(root, "affine", 2)
    return root


@pytest.fixture(scope="session")
def hostile_server(
    hostile_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real server with a 64 KiB body limit and an admin key (inference needs none), shared by
    the hostile-input tests."""
    env = {
        "NORMSERVE_ADMIN_KEY": ADMIN_KEY,
        "NORMSERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "NORMSERVE_INTRA_OP_THREADS": "1",
    }
    log = tmp_path_factory.mktemp("hostile-log") / "server.log"
    with running_server(hostile_repository, log, env) as server:
        yield server


@pytest.fixture
def healthy_after(hostile_server: Server) -> Iterator[Server]:
    """The test's server; after the test, it must still be healthy (see ``assert_healthy``)."""
    yield hostile_server
    assert_healthy(hostile_server)


def assert_error(response, status: int, *needles: str) -> None:
    """A 4xx with exactly ``{"error": "..."}`` naming what was wrong."""
    assert response.status == status, (response.status, response.body[:300])
    assert response.headers["content-type"] == "application/json"
    body = orjson.loads(response.body)
    assert set(body) == {"error"}, body
    for needle in needles:
        assert needle in body["error"], body["error"]
