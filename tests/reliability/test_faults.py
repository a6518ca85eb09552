"""Faults against a real server: overload, clients that leave early, hot reload of broken
versions under load, a repository that changes under it, and shutdown under load.

Every server here is started and stopped by its test; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import orjson

from benchmarks.http_client import HttpConnection
from benchmarks.soak import make_probes, soak
from benchmarks.v2_payload import decode_response, infer_request
from tests.reliability.conftest import ADMIN_KEY, assert_error, assert_healthy, bearer, port_of
from tests.reliability.raw_http import open_socket, read_response
from tests.service.fake_models import affine_model, affine_probe, affine_reference, write_entry
from tests.service.process import Server, running_server, wait_until

RTOL, ATOL = 1e-5, 1e-5
HOST = "127.0.0.1"


def rows(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def infer_raw(x: np.ndarray, *, version: int | None = None, binary: bool = False) -> bytes:
    raw = infer_request(HOST, "affine", {"x": x}, binary=binary)
    if version is not None:
        raw = raw.replace(
            b"/v2/models/affine/infer", f"/v2/models/affine/versions/{version}/infer".encode(), 1
        )
    return raw


def assert_answer(response, x: np.ndarray, version: int = 1) -> None:
    assert response.status == 200, response.body[:300]
    y, z = affine_reference(x, version)
    outputs = decode_response(response)
    np.testing.assert_allclose(outputs["y"], y, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(outputs["z"], z, rtol=RTOL, atol=ATOL)


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5.0).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def settle(server: Server) -> None:
    """Nothing queued and nothing in flight but the scrape that asks."""
    wait_until(
        lambda: (
            metric(server.url, "normserve_queue_depth{") == 0.0
            and metric(server.url, "normserve_inflight_requests") == 1.0
        ),
        10,
        "queue empty and no request in flight",
        server.proc,
    )


async def burst(port: int, raws: list[bytes]) -> list[tuple[float, object]]:
    """Send every request at once, each on its own connection: (latency, response) in order."""

    async def one(raw: bytes) -> tuple[float, object]:
        reader, writer = await asyncio.open_connection(HOST, port)
        from benchmarks.http_client import ResponseParser

        parser, responses = ResponseParser(), []
        started = time.perf_counter()
        writer.write(raw)
        while not responses:
            data = await asyncio.wait_for(reader.read(1 << 16), 30)
            assert data, "connection closed without a response"
            responses = parser.feed(data)
        writer.close()
        return time.perf_counter() - started, responses[0]

    return await asyncio.gather(*(one(raw) for raw in raws))


# -- overload --------------------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_at_once_and_the_server_recovers(
    tmp_path: Path,
):
    """Queue bound 4, a 100 ms batching window, 64 simultaneous one-row requests: the ones
    that do not fit are refused without waiting (faster than any request that was served,
    which all waited out the window), and afterwards a load at the bound fails nothing."""
    root = tmp_path / "repo"
    batching = {"max_queue_delay_ms": 100, "max_queue_size": 4}
    write_entry(root, "affine", 1, overrides={"dynamic_batching": batching})
    env = {"NORMSERVE_INTRA_OP_THREADS": "1", "NORMSERVE_RETRY_AFTER_S": "2"}
    with running_server(root, tmp_path / "server.log", env) as server:
        port = port_of(server)
        inputs = [rows(i) for i in range(64)]
        answers = asyncio.run(burst(port, [infer_raw(x) for x in inputs]))
        served = [(t, r, x) for (t, r), x in zip(answers, inputs, strict=True) if r.status == 200]
        refused = [(t, r) for t, r in answers if r.status == 503]
        assert len(served) + len(refused) == 64, [r.status for _, r in answers]
        assert served
        assert len(refused) >= 32
        for _, response in refused:
            assert_error(response, 503, "queue full (4 requests waiting)")
            assert response.headers["retry-after"] == "2"
        for _, response, x in served:
            assert_answer(response, x)
        assert max(t for t, _ in refused) < min(t for t, _, _ in served)
        settle(server)

        probes = make_probes(np.concatenate(inputs), _reference(1), model="affine", input_name="x")
        after = asyncio.run(soak(HOST, port, probes, requests=80, concurrency=4))
        assert after.statuses == {200: 80}
        assert after.wrong_count == 0, after.wrong
        settle(server)
        assert_healthy(server)


def _reference(version: int):
    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        y, z = affine_reference(x, version)
        return {"y": y, "z": z}

    return reference


# -- clients that leave ----------------------------------------------------------------------------


def test_clients_leaving_mid_body_or_mid_request_leak_no_slot_and_poison_no_batch(
    tmp_path: Path,
):
    """Queue bound 8, a 300 ms batching window. Each round: 10 clients stop mid-body, 4 send a
    request and reset the connection while it is queued, 4 wait for theirs; the 4 that wait
    get their own answers from the batch they shared with the 4 that left. Five rounds: a
    leaked slot per departure would have filled the queue by the second."""
    root = tmp_path / "repo"
    batching = {"max_queue_delay_ms": 300, "max_queue_size": 8}
    write_entry(root, "affine", 1, max_batch_size=16, overrides={"dynamic_batching": batching})
    env = {"NORMSERVE_INTRA_OP_THREADS": "1"}
    with running_server(root, tmp_path / "server.log", env) as server:
        port = port_of(server)
        for round_ in range(5):
            for i in range(10):
                raw = infer_raw(rows(1000 + i))
                with open_socket(port) as sock:
                    sock.sendall(raw[: len(raw) - 20])  # headers and part of the body
            leaving = [open_socket(port) for _ in range(4)]
            staying = [open_socket(port) for _ in range(4)]
            inputs = [rows(100 * round_ + i) for i in range(8)]
            for sock, x in zip(leaving + staying, inputs, strict=True):
                sock.sendall(infer_raw(x, binary=bool(round_ % 2)))
            wait_until(lambda: metric(server.url, "normserve_queue_depth{") == 8.0, 5, "8 queued")
            for sock in leaving:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                sock.close()  # a reset, while the request waits for its batch
            for sock, x in zip(staying, inputs[4:], strict=True):
                assert_answer(read_response(sock), x)
                sock.close()
            settle(server)
        # All 8 slots are free: 8 simultaneous requests all fit and are all served.
        inputs = [rows(9000 + i) for i in range(8)]
        for (_, response), x in zip(
            asyncio.run(burst(port, [infer_raw(x) for x in inputs])), inputs, strict=True
        ):
            assert_answer(response, x)
        settle(server)
        assert_healthy(server)


# -- hot reload of broken versions under load ------------------------------------------------------


class VersionedLoad:
    """Threads sending requests back to back, recording (status, version, x, outputs)."""

    def __init__(self, port: int, threads: int = 4, seconds: float = 60.0) -> None:
        self.port = port
        self.results: list[tuple[int, str, np.ndarray, dict]] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, index: int) -> None:
        with HttpConnection(HOST, self.port, timeout_s=30) as conn:
            i = 0
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                x = rows(10_000 * index + i, n=1 + i % 3)
                response = conn.request(infer_raw(x, binary=bool(i % 2)))
                version = ""
                outputs: dict = {}
                if response.status == 200:
                    outputs = decode_response(response)
                    header_length = int(
                        response.headers.get("inference-header-content-length", len(response.body))
                    )
                    version = orjson.loads(response.body[:header_length])["model_version"]
                self.results.append((response.status, version, x, outputs))
                i += 1

    def __enter__(self) -> VersionedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_for_more(self, count: int) -> None:
        target = len(self.results) + count
        wait_until(lambda: len(self.results) >= target, 20, f"{count} more answers")


def _broken_versions(root: Path) -> list[tuple[str, str]]:
    """(what, expected refusal) after writing each broken version 2 in turn."""
    return [
        ("bad ONNX bytes", "ONNX Runtime cannot load model.onnx"),
        ("model.json not JSON", "cannot read JSON"),
        ("model.json naming another input", "differ from the graph's"),
        ("model.json for another model", "but lies in affine/2"),
        ("sha256 mismatch", "does not match model.json's onnx_sha256"),
        ("failing golden probe", "golden probe output 'y' differs"),
        ("model.onnx replaced by a directory", "cannot read"),
    ]


def _write_broken(root: Path, what: str) -> None:
    entry = root / "affine" / "2"
    if what == "bad ONNX bytes":
        write_entry(root, "affine", 2, onnx_bytes=b"\x08\x07garbage", replace=True)
    elif what == "model.json not JSON":
        write_entry(root, "affine", 2, replace=True)
        (entry / "model.json").write_text('{"format": "normserve.model/1", ')
    elif what == "model.json naming another input":
        inputs = [{"name": "image", "datatype": "FP32", "shape": [-1, 3]}]
        write_entry(root, "affine", 2, overrides={"inputs": inputs}, replace=True)
    elif what == "model.json for another model":
        write_entry(root, "affine", 2, overrides={"name": "other"}, replace=True)
    elif what == "sha256 mismatch":
        write_entry(root, "affine", 2, replace=True)
        (entry / "model.onnx").write_bytes(affine_model(9))
    elif what == "failing golden probe":
        probe = affine_probe(2, skew=0.5)
        write_entry(root, "affine", 2, overrides={"golden_probe": probe}, replace=True)
    elif what == "model.onnx replaced by a directory":
        write_entry(root, "affine", 2, replace=True)
        (entry / "model.onnx").unlink()
        (entry / "model.onnx").mkdir()
    else:
        raise AssertionError(what)


def test_broken_versions_loaded_under_load_are_refused_and_no_request_fails(tmp_path: Path):
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    env = {"NORMSERVE_ADMIN_KEY": ADMIN_KEY, "NORMSERVE_INTRA_OP_THREADS": "1"}
    load_url = "/v2/repository/models/affine/load"
    with (
        running_server(root, tmp_path / "server.log", env) as server,
        VersionedLoad(port_of(server)) as load,
    ):
        load.wait_for_more(50)
        for what, reason in _broken_versions(root):
            _write_broken(root, what)
            response = httpx.post(f"{server.url}{load_url}", headers=bearer(ADMIN_KEY), timeout=30)
            assert response.status_code == 400, (what, response.text)
            message = response.json()["error"]
            assert reason in message, (what, message)
            assert "still serving version(s) [1]" in message, (what, message)
            load.wait_for_more(20)
        shutil.rmtree(root / "affine" / "2")
        write_entry(root, "affine", 2)  # a good version 2 at last
        response = httpx.post(f"{server.url}{load_url}", headers=bearer(ADMIN_KEY), timeout=30)
        assert response.status_code == 200, response.text
        wait_until(lambda: any(r[1] == "2" for r in load.results[-8:]), 20, "version 2 served")
        load.wait_for_more(50)
    statuses = {r[0] for r in load.results}
    assert statuses == {200}, [r for r in load.results if r[0] != 200][:3]
    for _, version, x, outputs in load.results:
        y, z = affine_reference(x, int(version))
        np.testing.assert_allclose(outputs["y"], y, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(outputs["z"], z, rtol=RTOL, atol=ATOL)
    assert "Traceback" not in server.log()


# -- a repository that changes under the server ----------------------------------------------------


def test_entries_and_directories_vanishing_while_serving_give_clear_errors_and_no_crash(
    tmp_path: Path,
):
    """Polling every 0.2 s. As root (here and in CI) no file mode makes a file unreadable, so
    'unreadable' is a file replaced by a directory; 'disappears' is a removal."""
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    write_entry(root, "affine", 2)
    write_entry(root, "other", 1)
    env = {
        "NORMSERVE_ADMIN_KEY": ADMIN_KEY,
        "NORMSERVE_POLL_INTERVAL_S": "0.2",
        "NORMSERVE_INTRA_OP_THREADS": "1",
    }
    with running_server(root, tmp_path / "server.log", env) as server:
        port = port_of(server)

        def infer(version: int | None = None, model: str = "affine"):
            raw = infer_raw(rows(5), version=version)
            if model != "affine":
                raw = raw.replace(b"/models/affine/", f"/models/{model}/".encode(), 1)
            with HttpConnection(HOST, port) as conn:
                return conn.request(raw)

        # model.onnx of a serving version becomes unreadable: refused, the loaded one serves.
        (root / "affine" / "2" / "model.onnx").rename(tmp_path / "kept.onnx")
        (root / "affine" / "2" / "model.onnx").mkdir()
        wait_until(
            lambda: "refused affine version 2; the loaded one keeps serving" in server.log(),
            10,
            "refusal",
        )
        assert_answer(infer(2), rows(5), 2)

        # model.json likewise.
        (root / "other" / "1" / "model.json").rename(tmp_path / "kept.json")
        (root / "other" / "1" / "model.json").mkdir()
        wait_until(
            lambda: "refused other version 1; the loaded one keeps serving" in server.log(),
            10,
            "refusal",
        )
        assert infer(model="other").status == 200

        # A version directory disappears: that version is retired, the others serve on.
        shutil.rmtree(root / "affine" / "1")
        wait_until(lambda: infer(1).status == 404, 10, "version 1 retired")
        assert_error(infer(1), 404, "has no version 1; available: [2]")
        assert_answer(infer(), rows(5), 2)

        # A whole model directory disappears: unloaded, 404 naming it; loading it is a 404.
        shutil.rmtree(root / "other")
        wait_until(lambda: infer(model="other").status == 404, 10, "other unloaded")
        assert_error(infer(model="other"), 404, "model 'other' is not in the repository")
        load = httpx.post(
            f"{server.url}/v2/repository/models/other/load", headers=bearer(ADMIN_KEY), timeout=10
        )
        assert load.status_code == 404
        assert "has no directory" in load.json()["error"]

        # The repository itself disappears: loaded models keep serving, said once in the log.
        shutil.move(root, tmp_path / "moved-away")
        wait_until(lambda: "cannot scan model repository" in server.log(), 10, "scan error logged")
        time.sleep(1.0)  # five more polls
        assert server.log().count("cannot scan model repository") == 1
        assert_answer(infer(), rows(5), 2)
        index = httpx.post(f"{server.url}/v2/repository/index", headers=bearer(ADMIN_KEY))
        assert index.status_code == 200
        assert [(r["name"], r["version"], r["state"]) for r in index.json()] == [
            ("affine", "2", "READY")
        ]
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        # ...and when it comes back, polling carries on.
        shutil.move(tmp_path / "moved-away", root)
        wait_until(lambda: "is readable again" in server.log(), 10, "repository back")
        assert server.proc.poll() is None
        assert "Traceback" not in server.log()


# -- shutdown under load ---------------------------------------------------------------------------


def test_sigterm_under_load_finishes_every_in_flight_request_and_refuses_new_ones(
    tmp_path: Path,
):
    """32 requests wait in one batch (1.5 s window) when SIGTERM arrives: all 32 complete with
    their own answers; requests arriving during the drain, on new or kept-alive connections,
    get 503 with Retry-After; the process exits 0 well inside the drain timeout."""
    root = tmp_path / "repo"
    write_entry(
        root,
        "affine",
        1,
        max_batch_size=64,
        overrides={"dynamic_batching": {"max_queue_delay_ms": 1500}},
    )
    env = {"NORMSERVE_DRAIN_TIMEOUT_S": "10", "NORMSERVE_INTRA_OP_THREADS": "1"}
    with running_server(root, tmp_path / "server.log", env) as server:
        port = port_of(server)
        kept_alive = HttpConnection(HOST, port)
        assert_answer(kept_alive.request(infer_raw(rows(1))), rows(1))
        inputs = [rows(200 + i, n=1 + i % 2) for i in range(32)]
        sockets = [open_socket(port, timeout_s=20) for _ in inputs]
        for sock, x in zip(sockets, inputs, strict=True):
            sock.sendall(infer_raw(x, binary=bool(len(x) % 2)))
        wait_until(lambda: metric(server.url, "normserve_queue_depth{") == 32.0, 5, "32 queued")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        ready = wait_until(
            lambda: (
                (r := httpx.get(f"{server.url}/v2/health/ready", timeout=2)).status_code == 503
                and r
            ),
            5,
            "ready turns 503",
            server.proc,
        )
        assert "shutting down" in ready.json()["error"]
        for _ in range(4):
            with open_socket(port) as sock:
                sock.sendall(infer_raw(rows(3)))
                refused = read_response(sock)
            assert_error(refused, 503, "server is shutting down")
            assert refused.headers["retry-after"] == "1"
        assert_error(kept_alive.request(infer_raw(rows(3))), 503, "shutting down")
        for sock, x in zip(sockets, inputs, strict=True):
            assert_answer(read_response(sock, timeout_s=15), x)
            sock.close()
        kept_alive.close()
        assert server.proc.wait(timeout=15) == 0
        assert time.monotonic() - signalled < 10
    assert "Traceback" not in server.log()


def test_a_request_uploading_its_body_when_sigterm_arrives_is_served(tmp_path: Path):
    """Admitted before the drain means served: the body's second half arrives after SIGTERM."""
    root = tmp_path / "repo"
    write_entry(root, "affine", 1)
    with running_server(
        root, tmp_path / "server.log", {"NORMSERVE_DRAIN_TIMEOUT_S": "10"}
    ) as server:
        port = port_of(server)
        x = rows(77, n=2)
        raw = infer_raw(x)
        with open_socket(port, timeout_s=20) as sock:
            sock.sendall(raw[: len(raw) - 20])  # headers and most of the body
            wait_until(
                lambda: metric(server.url, "normserve_inflight_requests") == 2.0,
                5,
                "the upload counted in flight",
                server.proc,
            )
            server.proc.send_signal(signal.SIGTERM)
            wait_until(
                lambda: httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 503,
                5,
                "ready turns 503",
                server.proc,
            )
            sock.sendall(raw[len(raw) - 20 :])
            assert_answer(read_response(sock, timeout_s=15), x)
        assert server.proc.wait(timeout=15) == 0
    assert "Traceback" not in server.log()
