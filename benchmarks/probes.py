"""Sequential probes that time blocks of calls and keep every individual time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.http_client import HttpConnection, HttpError

__all__ = ["CallProbe", "HttpProbe"]


@dataclass
class CallProbe:
    """Times ``fn`` call by call; ``block`` returns the block's median and keeps every time."""

    fn: Callable[[], object]
    times: list[float] = field(default_factory=list)

    def block(self, calls: int) -> float:
        times = []
        fn = self.fn
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        self.times += times
        return statistics.median(times)


@dataclass
class HttpProbe:
    """Sequential requests on one keep-alive connection; any non-200 answer is an error."""

    conn: HttpConnection
    request: bytes
    times: list[float] = field(default_factory=list)

    def block(self, calls: int) -> float:
        times = []
        conn, request = self.conn, self.request
        for _ in range(calls):
            elapsed, response = conn.timed(request)
            if response.status != 200:
                raise HttpError(f"answered {response.status}: {response.body[:200]!r}")
            times.append(elapsed)
        self.times += times
        return statistics.median(times)
