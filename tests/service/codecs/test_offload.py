"""The JSON offload worker: it decodes a large body as the server itself would, and it ends
with the server, even one killed without a chance to shut its pool down."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx2 as httpx
import numpy as np
import orjson

from normserve.model_repository import scan_repository
from normserve.service.codecs.offload import OFFLOAD_BYTES, JsonOffload
from normserve.service.codecs.v2 import decode_infer_request, parse_json_body
from normserve.service.runtime.loader import load_model
from normserve.service.settings import Settings
from tests.service.process import gone, running_server, wait_until


def _large_body(rows: int = 4) -> tuple[bytes, np.ndarray]:
    """A digits request padded with JSON whitespace past the offload size."""
    x = np.random.default_rng(3).normal(size=(rows, 1, 8, 8)).astype(np.float32)
    request = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32"}]}
    request["inputs"][0]["data"] = x.ravel().tolist()
    body = orjson.dumps(request) + b" " * OFFLOAD_BYTES
    return body, x


def test_the_worker_decodes_what_the_server_would(digits_repository: Path):
    (entry,) = scan_repository(digits_repository)
    model = load_model(entry, Settings(provider="cpu"), ["CPUExecutionProvider"])
    body, x = _large_body()
    offload = JsonOffload()
    try:
        decoded = asyncio.run(offload.infer_request(model, body, None))
    finally:
        offload.close()
    here = decode_infer_request(parse_json_body(body), model)
    np.testing.assert_array_equal(decoded.inputs["input"], x)
    np.testing.assert_array_equal(decoded.inputs["input"], here.inputs["input"])
    assert decoded.output_names == here.output_names


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_worker_ends_with_a_server_that_was_killed(digits_repository: Path, tmp_path: Path):
    body, _ = _large_body()
    with running_server(digits_repository, tmp_path / "server.log") as server:
        answer = httpx.post(
            f"{server.url}/v2/models/digits/infer",
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        forkservers = [
            pid
            for pid in _children(server.proc.pid)
            if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(forkservers) == 1, "the large body was not decoded in the offload worker"
        workers = _children(forkservers[0])
        assert workers, "the forkserver has no worker"
        server.proc.send_signal(signal.SIGKILL)  # no atexit, no pool shutdown
        server.proc.wait(timeout=10)
        started = [*forkservers, *workers]
        wait_until(lambda: all(gone(pid) for pid in started), 10, "the offload processes ended")
