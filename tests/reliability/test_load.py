"""Sustained load against a real server, every answer verified (the short version of
``benchmarks/soak.py``): 2000 requests over 64 keep-alive connections with dynamic batching on,
each carrying its own 1-4 rows, JSON or binary. Every response must be a 200 holding exactly
its own input's outputs (a mis-split batch hands some request another's rows), and the
server's resident memory must stay flat after a warm-up.

Memory bound: after 500 warm-up requests the server's VmRSS may grow by at most 24 MiB over the
next 2000 (measured here: a few MiB of allocator noise; a leak of one 16 KiB request body per
request would already be 31 MiB).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from benchmarks.server_process import memory_kib
from benchmarks.soak import make_probes, soak
from tests.reliability.conftest import assert_healthy, port_of
from tests.service.fake_models import affine_reference, write_entry
from tests.service.process import running_server

CONCURRENCY = 64
WARMUP, REQUESTS = 500, 2000
RSS_GROWTH_LIMIT_MIB = 24
RTOL, ATOL = 1e-5, 1e-5


def test_2000_verified_requests_at_concurrency_64_with_flat_memory(tmp_path: Path):
    root = tmp_path / "repo"
    batching = {"max_queue_delay_ms": 2.0, "max_queue_size": 256}
    write_entry(root, "affine", 1, overrides={"dynamic_batching": batching})
    inputs = np.random.default_rng(7).normal(size=(512, 3)).astype(np.float32)

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        y, z = affine_reference(x, 1)
        return {"y": y, "z": z}

    probes = make_probes(inputs, reference, model="affine", input_name="x", count=97)
    env = {"NORMSERVE_INTRA_OP_THREADS": "1", "NORMSERVE_ACCESS_LOG": "false"}
    with running_server(root, tmp_path / "server.log", env) as server:
        port = port_of(server)
        warm = asyncio.run(soak("127.0.0.1", port, probes, requests=WARMUP, rtol=RTOL, atol=ATOL))
        rss_before = memory_kib(server.proc.pid)["VmRSS"]
        run = asyncio.run(
            soak(
                "127.0.0.1",
                port,
                probes,
                requests=REQUESTS,
                concurrency=CONCURRENCY,
                offset=WARMUP,
                rtol=RTOL,
                atol=ATOL,
                timeout_s=120,
            )
        )
        rss_after = memory_kib(server.proc.pid)["VmRSS"]
        stats = server_stats(server.url)
        assert_healthy(server)
    for result in (warm, run):
        assert result.statuses == {200: result.requests}, result.statuses
        assert result.wrong_count == 0, result.wrong
    growth_mib = (rss_after - rss_before) / 1024
    assert growth_mib < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth_mib:.1f} MiB"
    # Batching really happened: fewer executions than requests.
    assert stats["execution_count"] < stats["inference_stats"]["success"]["count"]


def server_stats(url: str) -> dict:
    import httpx2 as httpx

    (stats,) = httpx.get(f"{url}/v2/models/affine/versions/1/stats").json()["model_stats"]
    return stats
