"""The serving image, built and run for real in a private engine (tests/deploy/conftest.py).

Built with `make image` as the README says; run read-only on a published loopback port; its
answers compared with ONNX Runtime on the host running the very model.onnx baked into it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.deploy import commands
from tests.deploy.conftest import REPO, BuiltImage, Engine, HealthRoutes
from tests.deploy.test_docker_scripts import healthcheck
from tests.service.process import free_port

pytestmark = pytest.mark.docker

# The image runs the same ONNX Runtime build as the host on the same CPU; only operator-level
# threading may reorder float32 sums.
RTOL, ATOL = 1e-5, 1e-5
SIZE_LIMIT_BYTES = 300 * 1000 * 1000  # the 300 MB, as `docker images` counts (10^6)
CONTEXT_LIMIT_BYTES = 10 * 1000 * 1000


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def ready_path(health_routes: HealthRoutes) -> str:
    """The route the image's HEALTHCHECK asks (test_dockerfile.py proves it is a ready route)."""
    path = healthcheck.READY_PATH
    assert path in health_routes.ready
    return path


def logs(engine: Engine, name: str) -> str:
    result = engine.docker("logs", "--tail", "40", name, check=False)
    return result.stdout + result.stderr


def wait_ready(engine: Engine, name: str, port: int, path: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request(port, "GET", path, timeout=2)[0] == 200:
                return
        state = engine.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        if state != "true":
            pytest.fail(f"container {name} exited before it was ready:\n{logs(engine, name)}")
        time.sleep(0.25)
    pytest.fail(f"container {name} not ready after {timeout_s} s:\n{logs(engine, name)}")


def inspect(engine: Engine, name: str, template: str) -> str:
    return engine.docker("inspect", "-f", template, name).stdout.strip()


@dataclass(frozen=True)
class Model:
    name: str
    entry: Path  # <repository>/<name>/<version>
    input_name: str
    input_shape: list[int]  # without the batch axis

    @classmethod
    def newest(cls, repository: Path, name: str) -> Model:
        versions = [p for p in (repository / name).iterdir() if p.name.isdigit()]
        entry = max(versions, key=lambda p: int(p.name))
        meta = json.loads((entry / "model.json").read_text(encoding="utf-8"))
        (tensor,) = meta["inputs"]
        return cls(name, entry, tensor["name"], [int(d) for d in tensor["shape"][1:]])

    def sample(self, batch: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.uniform(0.0, 16.0, size=(batch, *self.input_shape)).astype(np.float32)

    def reference(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """ONNX Runtime on the host, on this entry's model.onnx."""
        session = ort.InferenceSession(
            str(self.entry / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {self.input_name: x}), strict=True))


def infer_body(model: Model, x: np.ndarray) -> bytes:
    tensor = {
        "name": model.input_name,
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def decode(body: bytes) -> dict[str, np.ndarray]:
    outputs = json.loads(body)["outputs"]
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in outputs}


def served_outputs(port: int, model: Model, x: np.ndarray) -> dict[str, np.ndarray]:
    status, body = request(port, "POST", f"/v2/models/{model.name}/infer", infer_body(model, x))
    assert status == 200, body
    return decode(body)


def assert_outputs_match(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


def baked_models(image: BuiltImage) -> list[Model]:
    names = sorted(p.name for p in image.repository.iterdir() if p.is_dir())
    assert names, f"{image.repository} holds no model"
    return [Model.newest(image.repository, name) for name in names]


@contextlib.contextmanager
def container(engine: Engine, command: str, name: str) -> Iterator[None]:
    engine.docker("rm", "-f", name, check=False)
    engine.sh(command)
    try:
        yield
    finally:
        engine.docker("rm", "-f", "--volumes", name, check=False)


@pytest.fixture(scope="module")
def served(
    engine: Engine, serve_image: BuiltImage, health_routes: HealthRoutes
) -> Iterator[tuple[str, int]]:
    """The README's `docker run`: read-only root filesystem, published on loopback only."""
    name, port = "normserve", free_port()
    with container(engine, commands.RUN_SERVE.format(name=name, port=port), name):
        wait_ready(engine, name, port, ready_path(health_routes))
        yield name, port


def test_image_is_slim_and_carries_no_torch(engine: Engine, serve_image: BuiltImage):
    size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", serve_image.tag).stdout)
    assert size <= SIZE_LIMIT_BYTES, f"image is {size / 1e6:.0f} MB"
    # What .dockerignore lets into the build (the classic builder reports it).
    sent = [line for line in serve_image.build_log.splitlines() if "build context" in line]
    assert sent, serve_image.build_log[-2000:]
    amount = sent[-1].split()[-1]
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    unit = next(u for u in ("kB", "MB", "GB", "B") if amount.endswith(u))
    assert float(amount.removesuffix(unit)) * units[unit] < CONTEXT_LIMIT_BYTES, sent[-1]
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    no_torch = engine.docker(
        "run", "--rm", "--entrypoint", "python", serve_image.tag, "-c", probe, check=False
    )
    assert no_torch.returncode == 0, "torch is importable in the serving image"
    # deploy/kubernetes' preStop pause runs `sleep` inside this image.
    engine.docker("run", "--rm", "--entrypoint", "sleep", serve_image.tag, "0")


def test_serves_the_baked_model_read_only_as_non_root(
    engine: Engine, served: tuple[str, int], serve_image: BuiltImage
):
    name, port = served
    for n, model in enumerate(baked_models(serve_image)):
        x = model.sample(batch=5, seed=n)
        assert_outputs_match(served_outputs(port, model, x), model.reference(x))
    assert inspect(engine, name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    user = inspect(engine, name, "{{.Config.User}}")
    assert user.split(":")[0].isdigit()
    assert int(user.split(":")[0]) != 0
    status = engine.docker("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids
    assert all(uid != "0" for uid in uids), f"PID 1 runs with uids {uids}"


def test_healthcheck_reports_healthy_and_can_fail(engine: Engine, served: tuple[str, int]):
    name, _ = served
    deadline = time.monotonic() + 60
    health = ""
    while time.monotonic() < deadline:
        health = inspect(engine, name, "{{.State.Health.Status}}")
        if health == "healthy":
            break
        assert health in {"starting", "healthy"}, inspect(engine, name, "{{json .State.Health}}")
        time.sleep(1)
    assert health == "healthy", inspect(engine, name, "{{json .State.Health}}")
    script = json.loads(inspect(engine, name, "{{json .Config.Healthcheck.Test}}"))
    assert script[0] == "CMD"
    failing = engine.docker("exec", "-e", "NORMSERVE_PORT=1", name, *script[1:], check=False)
    assert failing.returncode == 1, failing


def test_mounted_repository_replaces_the_baked_one_and_nothing_is_written(
    engine: Engine,
    serve_image: BuiltImage,
    digits_repository: Path,
    health_routes: HealthRoutes,
    tmp_path: Path,
):
    mounted = tmp_path / "mounted"
    shutil.copytree(digits_repository, mounted)
    # pytest's folders are private to root; the container's non-root user must read this one.
    for path in [mounted, *mounted.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (model,) = [Model.newest(mounted, p.name) for p in mounted.iterdir()]
    baked = {m.name: m for m in baked_models(serve_image)}
    name, port = "normserve-mounted", free_port()
    command = commands.RUN_MOUNTED.format(name=name, repository=mounted, port=port)
    with container(engine, command, name):
        wait_ready(engine, name, port, ready_path(health_routes))
        x = model.sample(batch=3, seed=7)
        got = served_outputs(port, model, x)
        assert_outputs_match(got, model.reference(x))
        if model.name in baked:
            other = baked[model.name].reference(x)
            assert any(np.max(np.abs(got[k] - other[k])) > 1e-3 for k in got), (
                "served the baked model, not the mounted one"
            )
        # Run without --read-only: still nothing written outside the volume.
        changes = engine.docker("diff", name).stdout.strip()
        assert changes == "", f"the server wrote to its filesystem:\n{changes}"


def test_sigterm_drains_in_flight_requests_then_exits(
    engine: Engine, serve_image: BuiltImage, health_routes: HealthRoutes
):
    """`docker stop` while a request is in flight: the server stops reporting ready, finishes
    that request, and exits by itself before docker's SIGKILL.

    The in-flight request is held in the dynamic batcher's queue by a long batching delay (a lone
    request waits that long for company), so it is surely still running when SIGTERM lands.
    """
    (model, *_) = baked_models(serve_image)
    name, port = "normserve-drain", free_port()
    ready = ready_path(health_routes)
    command = commands.RUN_DRAIN.format(name=name, port=port)
    delay_s = float(command.split("NORMSERVE_MAX_QUEUE_DELAY_MS=")[1].split()[0]) / 1000
    with container(engine, command, name), ThreadPoolExecutor(max_workers=1) as pool:
        wait_ready(engine, name, port, ready)
        x = model.sample(batch=4, seed=3)
        sent = time.monotonic()
        in_flight = pool.submit(
            request, port, "POST", f"/v2/models/{model.name}/infer", infer_body(model, x), 60
        )
        time.sleep(0.5)  # queued in the batcher by now
        stop = subprocess.Popen(
            commands.STOP.format(name=name).split(),
            cwd=REPO,
            env=engine.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # SIGTERM: the server stops reporting ready (answers 503, or refuses) ...
            deadline = time.monotonic() + 10
            draining = False
            while not draining and time.monotonic() < deadline:
                try:
                    draining = request(port, "GET", ready, timeout=2)[0] == 503
                except (OSError, http.client.HTTPException):
                    draining = True
                if not draining:
                    time.sleep(0.1)
            assert draining, "still ready 10 s after SIGTERM"
            # ... yet keeps running while a request is in flight ...
            assert not in_flight.done(), "the request finished before the drain could be seen"
            assert time.monotonic() - sent < delay_s
            assert inspect(engine, name, "{{.State.Running}}") == "true"
            # ... finishes it ...
            status, answer = in_flight.result(timeout=60)
            assert status == 200, answer
            assert_outputs_match(decode(answer), model.reference(x))
            # ... and exits by itself, well before docker's SIGKILL.
            stop.wait(timeout=60)
        finally:
            if stop.poll() is None:
                stop.kill()
            _, err = stop.communicate()
        assert stop.returncode == 0, err
        state = json.loads(inspect(engine, name, "{{json .State}}"))
        assert state["OOMKilled"] is False
        # 0, or 143 where the server re-raises SIGTERM after its drain; 137 would be SIGKILL.
        assert state["ExitCode"] in (0, 143), (state, logs(engine, name))
