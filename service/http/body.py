"""Reading request bodies within the size limit, straight from the ASGI receive channel, and
bounding how many large ones the server holds at once."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive

from normserve.service.errors import BadRequest, PayloadTooLarge

__all__ = ["LARGE_BODY_BYTES", "BodyGate", "read_body"]

LARGE_BODY_BYTES = 1024 * 1024
"""A body declaring at least this many bytes is large: it waits for a place in ``BodyGate``."""


class BodyGate:
    """How many large bodies the server reads and works on at once (``bodies``: from the first
    byte read to the answer), and how many compressed bodies it inflates at once
    (``inflating``). A request waiting here reads nothing: its connection fills and stops being
    read (the body timeout does not run meanwhile), so waiting costs no memory. Taken in that
    order only (large body, then inflating), they cannot deadlock."""

    def __init__(self, bodies: int = 2, inflating: int = 1) -> None:
        self.bodies = asyncio.Semaphore(bodies)
        self.inflating = asyncio.Semaphore(inflating)

    @staticmethod
    def is_large(declared: str | None) -> bool:
        """Whether a ``Content-Length`` makes a body large (a malformed one is refused later)."""
        return (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and (len(declared) > 18 or int(declared) >= LARGE_BODY_BYTES)
        )


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
