"""The benchmark tooling counts and summarizes correctly (no timing is asserted anywhere)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from benchmarks.echo_server import EchoServer
from benchmarks.http_client import HttpConnection, HttpError, ResponseParser, encode_request
from benchmarks.loadgen import run_load
from benchmarks.stats import interleave, percentile, spread, summarize_latencies


def test_percentile_is_nearest_rank():
    values = [15.0, 20.0, 35.0, 40.0, 50.0]  # the textbook example
    assert percentile(values, 5) == 15.0
    assert percentile(values, 30) == 20.0
    assert percentile(values, 40) == 20.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 0) == 15.0
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile(values, 101)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpys_inverted_cdf(n):
    rng = random.Random(n)
    values = sorted(rng.expovariate(1.0) for _ in range(n))
    for p in (1, 10, 50, 90, 99, 99.9, 100):
        assert percentile(values, p) == np.percentile(values, p, method="inverted_cdf")


def test_latency_summary_and_spread():
    summary = summarize_latencies([0.004, 0.001, 0.003, 0.002])
    assert (summary.count, summary.min, summary.max) == (4, 0.001, 0.004)
    assert summary.p50 == 0.002
    assert summary.p99 == 0.004
    assert summary.mean == pytest.approx(0.0025)
    assert summary.to_dict()["p50"] == pytest.approx(2.0)  # milliseconds
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.scaled(1e3).median == 2500.0


def test_interleave_rotates_the_order_and_keeps_rounds_aligned():
    order: list[str] = []

    def make(name: str, value: float):
        def call() -> float:
            order.append(name)
            return value + len(order)

        return call

    samples = interleave({"a": make("a", 0), "b": make("b", 100), "c": make("c", 200)}, 4)
    assert order == list("abc" + "bca" + "cab" + "abc")
    assert [len(v) for v in samples.values()] == [4, 4, 4]
    assert samples["a"][0] == 1
    assert samples["b"][1] == 104  # round 1 starts with b: the 4th call overall


RESPONSES = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello"
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 2, 7, len(RESPONSES)])
def test_parser_handles_any_split_pipelining_and_chunks(step):
    parser = ResponseParser()
    got = []
    for start in range(0, len(RESPONSES), step):
        got += parser.feed(RESPONSES[start : start + step])
    assert [(r.status, r.body) for r in got] == [(200, b"hello"), (503, b""), (200, b"abcde")]
    assert got[1].headers["retry-after"] == "1"
    assert parser.idle


def test_parser_refuses_garbage():
    with pytest.raises(HttpError, match="status line"):
        ResponseParser().feed(b"SMTP ready\r\n\r\n")
    with pytest.raises(HttpError, match="neither Content-Length"):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\n\r\n")


def test_encode_request_sets_length():
    raw = encode_request("POST", "/v2/x", host="h:1", body=b"abc", headers={"X-A": "1"})
    assert raw == b"POST /v2/x HTTP/1.1\r\nHost: h:1\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc"
    with pytest.raises(ValueError, match="set by encode_request"):
        encode_request("GET", "/", host="h", headers={"content-length": "9"})


def test_load_generator_counts_every_request_and_status():
    request = encode_request("POST", "/status/503", host="127.0.0.1", body=b"x" * 300)
    with EchoServer() as server:
        result = run_load(
            server.host, server.port, request, concurrency=4, requests=57, warmup_requests=9
        )
        assert server.answered == 57 + 9  # the warm-up is sent, not recorded
    assert result.completed == 57
    assert len(result.latencies_s) == 57
    assert result.statuses == {503: 57}
    assert result.errors == 57
    assert result.duration_s > 0
    assert result.throughput == pytest.approx(57 / result.duration_s)
    assert all(t > 0 for t in result.latencies_s)
    summary = result.to_dict()
    assert summary["latency_ms"]["count"] == 57
    assert summary["statuses"] == {"503": 57}


def test_load_generator_by_duration_stops_and_counts_successes():
    request = encode_request("GET", "/chunked", host="127.0.0.1")
    with EchoServer() as server:
        result = run_load(
            server.host, server.port, request, concurrency=3, duration_s=0.3, warmup_s=0.05
        )
        answered = server.answered
    assert result.completed > 0
    assert result.errors == 0
    assert result.statuses == {200: result.completed}
    assert answered >= result.completed  # warm-up requests were answered but not recorded


def test_sequential_connection_reuses_one_socket():
    with EchoServer() as server, HttpConnection(server.host, server.port) as conn:
        for _ in range(5):
            elapsed, response = conn.timed(encode_request("GET", "/", host="h"))
            assert response.status == 200
            assert response.body == b'{"ok":true}'
            assert elapsed > 0
        assert server.answered == 5


def test_load_generator_rejects_bad_bounds():
    with pytest.raises(ValueError, match="exactly one"):
        run_load("127.0.0.1", 1, b"", concurrency=1)
    with pytest.raises(ValueError, match="concurrency"):
        run_load("127.0.0.1", 1, b"", concurrency=0, requests=1)
