"""Reading request bodies within the size limit, straight from the ASGI receive channel."""

from __future__ import annotations

from starlette.types import Message, Receive

from normserve.service.errors import BadRequest, PayloadTooLarge

__all__ = ["read_body"]


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
