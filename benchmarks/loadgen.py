"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending the next request
as soon as the previous response is complete (the model of ``wrk``).

It runs on asyncio ``Protocol`` callbacks, not streams: per request it costs one ``write``, one
or two ``data_received`` calls and an incremental parse, tens of microseconds of CPU (measured:
``benchmarks.loadgen_ceiling``), so the server, not the client, is what a run measures. Its own
CPU time is reported with every run because on a 2-core machine it shares the cores with the
server.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

from benchmarks.http_client import HttpError, HttpResponse, ResponseParser
from benchmarks.stats import LatencySummary, summarize_latencies

__all__ = ["LoadResult", "run_load"]


@dataclass(frozen=True)
class LoadResult:
    """What one run measured; only requests sent inside the measurement window count."""

    concurrency: int
    completed: int
    errors: int  # responses with a status outside 2xx
    statuses: dict[int, int]
    duration_s: float  # from the window's start to the last recorded response
    latencies_s: list[float] = field(repr=False)
    client_cpu_s: float  # CPU the generator's thread used during the whole run

    @property
    def throughput(self) -> float:
        """Completed requests per second (errors included: they were answered)."""
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    def latency(self) -> LatencySummary:
        return summarize_latencies(self.latencies_s)

    def to_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "completed": self.completed,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput,
            "latency_ms": self.latency().to_dict() if self.latencies_s else None,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_us_per_request": (
                1e6 * self.client_cpu_s / self.completed if self.completed else None
            ),
        }


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.recording = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except HttpError as exc:
            self.run.fail(exc)
            return
        for response in responses:
            self.run.on_response(self, response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.on_lost(self, exc)

    def send(self, request: bytes, recording: bool) -> None:
        assert self.transport is not None
        self.recording = recording
        self.sent_at = time.perf_counter()
        self.transport.write(request)


class _Run:
    """The shared state of one run: when to stop, what to record."""

    def __init__(
        self,
        request: bytes,
        *,
        duration_s: float | None,
        requests: int | None,
        warmup_s: float,
        warmup_requests: int,
    ) -> None:
        self.request = request
        self.duration_s = duration_s
        self.requests = requests
        self.warmup_s = warmup_s
        self.warmup_requests = warmup_requests
        self.tickets = 0
        self.window_start = 0.0
        self.deadline = float("inf")
        self.last_done = 0.0
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.active: set[_Connection] = set()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, connections: list[_Connection]) -> None:
        now = time.perf_counter()
        if self.duration_s is not None:
            self.window_start = now + self.warmup_s
            self.deadline = self.window_start + self.duration_s
        else:
            self.window_start = now
        self.active = set(connections)
        for conn in connections:
            self._next(conn)

    def _next(self, conn: _Connection) -> None:
        """Send conn's next request, or retire it when the run is over."""
        if self.duration_s is not None:
            now = time.perf_counter()
            if now < self.deadline:
                conn.send(self.request, recording=now >= self.window_start)
                return
        else:
            assert self.requests is not None
            ticket = self.tickets
            if ticket < self.warmup_requests + self.requests:
                self.tickets += 1
                if ticket == self.warmup_requests:
                    self.window_start = time.perf_counter()
                conn.send(self.request, recording=ticket >= self.warmup_requests)
                return
        self.active.discard(conn)
        if not self.active and not self.done.done():
            self.done.set_result(None)

    def on_response(self, conn: _Connection, response: HttpResponse) -> None:
        now = time.perf_counter()
        if conn.recording:
            self.latencies.append(now - conn.sent_at)
            self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            self.last_done = now
        self._next(conn)

    def on_lost(self, conn: _Connection, exc: Exception | None) -> None:
        if conn in self.active:
            self.fail(HttpError(f"connection closed mid-run: {exc or 'by the server'}"))

    def fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float | None,
    requests: int | None,
    warmup_s: float,
    warmup_requests: int,
    timeout_s: float,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(
        request,
        duration_s=duration_s,
        requests=requests,
        warmup_s=warmup_s,
        warmup_requests=warmup_requests,
    )
    connections: list[_Connection] = []
    try:
        for _ in range(concurrency):
            _, protocol = await loop.create_connection(lambda: _Connection(run), host, port)
            connections.append(protocol)
        cpu_start = time.thread_time()
        run.start(connections)
        await asyncio.wait_for(asyncio.shield(run.done), timeout=timeout_s)
        cpu = time.thread_time() - cpu_start
    except TimeoutError:
        raise HttpError(f"load run did not finish within {timeout_s} s") from None
    finally:
        for conn in connections:
            run.active.discard(conn)  # closing it now is not a failure
            if conn.transport is not None:
                conn.transport.close()
        if not run.done.done():
            run.done.cancel()
    errors = sum(n for status, n in run.statuses.items() if not 200 <= status < 300)
    return LoadResult(
        concurrency=concurrency,
        completed=len(run.latencies),
        errors=errors,
        statuses=dict(run.statuses),
        duration_s=max(0.0, run.last_done - run.window_start),
        latencies_s=run.latencies,
        client_cpu_s=cpu,
    )


def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float | None = None,
    requests: int | None = None,
    warmup_s: float = 0.0,
    warmup_requests: int = 0,
    timeout_s: float = 120.0,
) -> LoadResult:
    """Drive ``request`` (an encoded HTTP/1.1 request) from ``concurrency`` connections.

    Give either ``duration_s`` (after ``warmup_s`` unrecorded seconds) or ``requests`` (after
    ``warmup_requests`` unrecorded ones). The run always ends: by its own bound or ``timeout_s``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be ≥ 1, got {concurrency}")
    if (duration_s is None) == (requests is None):
        raise ValueError("give exactly one of duration_s and requests")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be ≥ 1, got {requests}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    return asyncio.run(
        _run_load(
            host,
            port,
            request,
            concurrency=concurrency,
            duration_s=duration_s,
            requests=requests,
            warmup_s=warmup_s,
            warmup_requests=warmup_requests,
            timeout_s=timeout_s,
        )
    )
