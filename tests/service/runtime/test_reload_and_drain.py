"""A real server: hot reload by polling under load, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
import time
import weakref
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from normserve.service.runtime.state import Runtime
from normserve.service.settings import Settings
from tests.service.fake_models import affine_model, affine_probe, affine_reference, write_entry
from tests.service.process import running_server, wait_until

RTOL, ATOL = 1e-6, 1e-6
X = np.array([[1.0, 2.0, -1.0]], dtype=np.float32)
BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": X[0].tolist()}]}


class Load:
    """A client thread sending infer requests back to back until stopped (at most 60 s)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[int, str, list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                response = client.post(f"{self.url}/v2/models/affine/infer", json=BODY)
                if response.status_code == 200:
                    body = response.json()
                    self.results.append((200, body["model_version"], body["outputs"][0]["data"]))
                else:
                    self.results.append((response.status_code, response.text, []))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def seen(self, predicate) -> bool:
        return any(predicate(r) for r in self.results[-5:])


def test_hot_reload_swaps_good_versions_refuses_bad_ones_and_no_request_fails(tmp_path: Path):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    env = {"NORMSERVE_POLL_INTERVAL_S": "0.2"}
    with running_server(root, tmp_path / "server.log", env) as server, Load(server.url) as load:
        wait_until(lambda: len(load.results) > 20, 20, "traffic on version 1")

        write_entry(root, "affine", 2)  # a new version appears
        wait_until(lambda: load.seen(lambda r: r[1] == "2"), 20, "version 2 served")

        # Version 2 replaced in place by a graph that computes something else, with a probe
        # recorded for it: a legitimate re-export, swapped in.
        write_entry(
            root,
            "affine",
            2,
            onnx_bytes=affine_model(5),
            overrides={"golden_probe": affine_probe(5)},
            replace=True,
        )
        y5 = affine_reference(X, 5)[0][0]
        wait_until(
            lambda: load.seen(lambda r: r[0] == 200 and np.allclose(r[2], y5, RTOL, ATOL)),
            20,
            "the re-exported version 2 served",
        )

        # A re-export whose outputs no longer match its golden probe: refused, logged.
        write_entry(
            root,
            "affine",
            2,
            onnx_bytes=affine_model(7),
            overrides={"golden_probe": affine_probe(5)},
            replace=True,
        )
        # A new version whose model.onnx does not hash to its onnx_sha256: refused, logged.
        bad = write_entry(root, "affine", 3)
        (bad / "model.onnx").write_bytes(affine_model(9))
        wait_until(lambda: server.log().count("refused affine version") >= 2, 20, "both refusals")
        served_after_refusals = len(load.results)
        wait_until(lambda: len(load.results) > served_after_refusals + 20, 20, "more traffic")

    log = server.log()
    assert "refused affine version 2; the loaded one keeps serving" in log
    assert "golden probe output 'y' differs" in log
    assert "refused affine version 3" in log
    assert "does not match model.json's onnx_sha256" in log
    statuses = {status for status, _, _ in load.results}
    assert statuses == {200}, [r for r in load.results if r[0] != 200][:3]
    y1 = affine_reference(X, 1)[0][0]
    y2 = affine_reference(X, 2)[0][0]
    allowed = {"1": [y1], "2": [y2, y5]}
    for _, version, data in load.results:
        assert any(np.allclose(data, y, RTOL, ATOL) for y in allowed[version]), (version, data)
    # after the refusals, the good re-export of version 2 still answered every request
    for _, version, data in load.results[served_after_refusals:]:
        assert version == "2"
        np.testing.assert_allclose(data, y5, rtol=RTOL, atol=ATOL)


def queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=2.0).text.splitlines():
        if line.startswith("normserve_queue_depth{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def slow_repository(root: Path, delay_ms: int) -> None:
    """A lone request waits ``delay_ms`` for company before it runs: a slow in-flight request."""
    write_entry(root, "affine", 1, overrides={"dynamic_batching": {"max_queue_delay_ms": delay_ms}})


def test_sigterm_turns_ready_503_lets_in_flight_requests_finish_and_exits(tmp_path: Path):
    root = tmp_path / "repo"
    slow_repository(root, 1500)
    env = {"NORMSERVE_DRAIN_TIMEOUT_S": "10"}
    with running_server(root, tmp_path / "server.log", env) as server:
        answers: list[httpx.Response] = []
        in_flight = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{server.url}/v2/models/affine/infer", json=BODY, timeout=15.0)
            )
        )
        in_flight.start()
        wait_until(lambda: queue_depth(server.url) == 1.0, 10, "request queued")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        ready = wait_until(
            lambda: (
                (r := httpx.get(f"{server.url}/v2/health/ready", timeout=2.0)).status_code == 503
                and r
            ),
            5,
            "ready turns 503",
            server.proc,
        )
        assert "shutting down" in ready.json()["error"]
        refused = httpx.post(f"{server.url}/v2/models/affine/infer", json=BODY, timeout=5.0)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/v2/health/live", timeout=2.0).status_code == 200
        in_flight.join(timeout=15)
        assert server.proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - signalled
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(
        answer.json()["outputs"][0]["data"], affine_reference(X, 1)[0][0], rtol=RTOL, atol=ATOL
    )
    assert elapsed < 10
    assert "SIGTERM received: draining" in server.log()


def test_drain_gives_up_at_the_drain_timeout(tmp_path: Path):
    root = tmp_path / "repo"
    slow_repository(root, 8000)  # in flight far longer than the drain timeout
    env = {"NORMSERVE_DRAIN_TIMEOUT_S": "2"}
    with running_server(root, tmp_path / "server.log", env) as server:
        client = threading.Thread(
            target=lambda: _ignore_errors(
                lambda: httpx.post(f"{server.url}/v2/models/affine/infer", json=BODY, timeout=15)
            ),
            daemon=True,
        )
        client.start()
        wait_until(lambda: queue_depth(server.url) == 1.0, 10, "request queued")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=10)
        elapsed = time.monotonic() - signalled
        client.join(timeout=10)
    # The drain timeout, plus the interpreter's own exit on a busy two-core machine.
    assert elapsed < 2.0 + 1.0
    assert "drain timeout: 1 request(s) still in flight" in server.log()


def _ignore_errors(call) -> None:
    with contextlib.suppress(httpx.TransportError):
        call()


async def _serve_then_unload(runtime: Runtime, model: weakref.ref) -> None:
    served = runtime.store.get("affine", None)
    x = np.ones((1, 3), np.float32)
    await served.batcher.submit({"x": x}, 1, [served.model.config.outputs[0].name])
    del served
    await runtime.unload("affine")
    for _ in range(200):  # bounded: the retiring task and the version's thread finish
        if model() is None:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("inline_ms", [0.0, 100.0], ids=["thread", "inline"])
def test_an_unloaded_version_is_freed_without_the_cyclic_garbage_collector(
    tmp_path: Path, inline_ms: float
):
    """The server freezes what start-up loaded out of the collector's sight (serve()); a model
    loaded then and unloaded later must therefore be freed by reference counts alone, or its
    session would never be freed. Checked with the collector off, for both ways a batch runs."""
    write_entry(tmp_path, "affine", 1)
    settings = Settings(repository=tmp_path, provider="cpu", inline_batch_ms=inline_ms)
    runtime = Runtime(settings=settings)
    runtime.load_repository()
    servable = runtime.store.get("affine", None)
    assert (servable.batcher.inline_samples > 0) == (inline_ms > 0)
    model = weakref.ref(servable.model)
    del servable
    gc.disable()
    try:
        asyncio.run(_serve_then_unload(runtime, model))
        assert model() is None, "the unloaded model lives on until a full collection"
    finally:
        gc.enable()
