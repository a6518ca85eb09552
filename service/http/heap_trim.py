"""Giving memory back to the system after a burst of connections has closed.

Thousands of connections opened at once leave the C allocator (glibc) holding the freed memory
of their transports, parsers and buffers in its free lists, scattered between blocks still in
use: it stays resident although nothing uses it (about 23 MiB after 2,000 connections).
Large bodies (tens of MiB read, inflated and decoded by several threads) leave the same.
``malloc_trim(0)`` hands those free pages back. ``HeapTrimmer`` asks for it once the open
connections fall to a quarter of their peak (and at least 256 fewer than the peak), or when
the last large body in flight has been served (``soon``), at most
once every ``MIN_INTERVAL_S``, a moment after the closing (``DELAY_S``), on the event loop; it
costs milliseconds and happens only after such bursts. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["HeapTrimmer", "malloc_trim"]

log = logging.getLogger("normserve.service")

BURST = 256
DELAY_S = 1.0
MIN_INTERVAL_S = 5.0


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


malloc_trim = _load_trim()
"""glibc's ``malloc_trim``, or None where there is none."""


class HeapTrimmer:
    """Told of every connection opened and closed; trims the heap after a burst ends."""

    def __init__(self, trim: Callable[[int], int] | None = malloc_trim) -> None:
        self._trim = trim
        self._open = 0
        self._peak = 0
        self._last = 0.0
        self._scheduled = False

    def opened(self) -> None:
        self._open += 1
        self._peak = max(self._peak, self._open)

    def closed(self, loop: asyncio.AbstractEventLoop) -> None:
        self._open -= 1
        if self._peak - self._open >= BURST and self._open * 4 <= self._peak:
            self.soon(loop)

    def soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Trim in a moment (and not within ``MIN_INTERVAL_S`` of the last trim): after a
        burst of connections, or after the last of some large bodies was served."""
        if self._trim is not None and not self._scheduled:
            self._scheduled = True
            wait = max(DELAY_S, self._last + MIN_INTERVAL_S - time.monotonic())
            loop.call_later(wait, self._run)

    def _run(self) -> None:
        self._scheduled = False
        if self._trim is None:
            return
        self._last = time.monotonic()
        self._peak = self._open
        started = time.perf_counter()
        self._trim(0)
        log.debug("heap trimmed in %.1f ms", (time.perf_counter() - started) * 1000)
