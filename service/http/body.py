"""Reading request bodies within the size limit, straight from the ASGI receive channel, and
bounding how many large ones the server holds at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.types import Message, Receive

from normserve.service.errors import BadRequest, PayloadTooLarge
from normserve.service.http.codings import decompress
from normserve.service.http.heap_trim import HeapTrimmer

__all__ = ["LARGE_BODY_BYTES", "BodyGate", "lower_priority", "read_body"]

LARGE_BODY_BYTES = 1024 * 1024
"""A body declaring at least this many bytes is large: it waits for a place in ``BodyGate``."""


class BodyGate:
    """How many large bodies the server reads and works on at once (``bodies``: from the first
    byte read to the answer), and the one thread that inflates compressed bodies, one at a
    time, at a lower scheduling priority than the event loop and inference. A request waiting
    for a place reads nothing: its connection fills and stops being read (the body timeout
    does not run meanwhile), so waiting costs no memory. When the last large body in flight
    has been served, the heap is trimmed (``HeapTrimmer``)."""

    def __init__(self, bodies: int = 2) -> None:
        self._bodies = asyncio.Semaphore(bodies)
        self._large = 0
        self._inflater = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="inflate", initializer=lower_priority
        )
        self._trimmer = HeapTrimmer()

    @staticmethod
    def is_large(declared: str | None) -> bool:
        """Whether a ``Content-Length`` makes a body large (a malformed one is refused later)."""
        return (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and (len(declared) > 18 or int(declared) >= LARGE_BODY_BYTES)
        )

    @contextlib.asynccontextmanager
    async def large_body(self) -> AsyncIterator[None]:
        """A place for one large body, for as long as its request is served."""
        async with self._bodies:
            self._large += 1
            try:
                yield
            finally:
                self._large -= 1
                if not self._large:
                    self._trimmer.soon(asyncio.get_running_loop())

    async def inflate(self, body: bytes, coding: str, limit: int) -> bytes:
        """``decompress`` on the inflating thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._inflater, decompress, body, coding, limit)


def lower_priority() -> None:
    """Run the calling thread at a lower scheduling priority (niceness +10; Linux threads
    have their own), so that heavy work beside the event loop yields the CPU to it."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body; a declared (``Content-Length``) or actual size over ``limit`` is refused
    (413) before it is buffered."""
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest(
                f"Content-Length must be a non-negative integer, got {declared[:32]!r}"
            )
        if len(declared) > 18 or int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {limit} bytes"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
