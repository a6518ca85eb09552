"""gRPC in the server process: off unless asked, a busy port stops start-up with one line, and
SIGTERM drains both protocols together."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from normserve.service.grpc.servicer import SERVICE
from tests.service.fake_models import affine_reference, write_entry
from tests.service.process import free_port, running_server

pytestmark = pytest.mark.slow


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_entry(tmp_path / "repo", "affine", 1)
    return tmp_path / "repo"


def test_grpc_is_off_unless_asked(repository, tmp_path):
    with running_server(repository, tmp_path / "log") as server:
        assert server.grpc_target is None
        assert "gRPC on" not in server.log()
        listening = server.log()
    assert "listening" in listening


def test_a_busy_grpc_port_stops_start_up_with_one_line(repository, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "normserve"),
                "serve",
                "--repository",
                str(repository),
                "--port",
                str(free_port()),
            ],
            env={
                "PATH": "/usr/bin:/bin",
                "NORMSERVE_PROVIDER": "cpu",
                "NORMSERVE_GRPC_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert f"127.0.0.1:{port}" in errors[0]
    assert "NORMSERVE_GRPC_PORT" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_sigterm_drains_grpc_with_http(repository, tmp_path):
    """A request in flight when SIGTERM lands is answered; new inference is refused with retry
    information, health turns NOT_SERVING, and the process exits cleanly."""
    env = {"NORMSERVE_MAX_QUEUE_DELAY_MS": "1500", "NORMSERVE_DRAIN_TIMEOUT_S": "10"}
    with running_server(repository, tmp_path / "log", env, grpc=True) as server:
        client = triton.InferenceServerClient(server.grpc_target)
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        tensor = triton.InferInput("x", [2, 3], "FP32")
        tensor.set_data_from_numpy(x)
        answers: list = []

        def slow() -> None:  # waits up to 1.5 s in the batch queue for company
            answers.append(client.infer("affine", [tensor], client_timeout=20))

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("affine", [tensor])
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert refused.value.message() == "server is shutting down"
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            check = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            request = triton.service_pb2.ModelInferRequest(model_name="affine")
            with pytest.raises(grpc.RpcError) as raw:
                method(request.SerializeToString(), timeout=5)
            assert dict(raw.value.trailing_metadata())["retry-after"] == "1"
        worker.join(timeout=20)
        (result,) = answers
        np.testing.assert_allclose(result.as_numpy("y"), affine_reference(x)[0], rtol=1e-5)
        assert server.proc.wait(timeout=15) == 0
        client.close()
