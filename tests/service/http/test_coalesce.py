"""HeadWithBody: uvicorn's real request cycle writes a small answer's head and body in one call,
and writes the same bytes as without it in every case."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from normserve.service.http.coalesce import JOIN_BELOW_BYTES, HeadWithBody


class Recording:
    """A transport that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def make_cycle(
    transport: Recording,
    *,
    method: str = "POST",
    expect_100: bool = False,
    keep_alive: bool = True,
    coalesce: bool = True,
) -> RequestResponseCycle:
    """uvicorn's own request cycle over ``transport`` (behind ``HeadWithBody`` if ``coalesce``)."""
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/", "http_version": "1.1"},  # type: ignore[arg-type]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=expect_100,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    if coalesce:
        cycle.transport = HeadWithBody(transport, cycle)  # type: ignore[arg-type]
    return cycle


def answer(
    messages: list[dict[str, Any]],
    *,
    method: str = "POST",
    coalesce: bool = True,
    expect_100: bool = False,
    keep_alive: bool = True,
) -> Recording:
    """Send ``messages`` through a real uvicorn cycle; the transport's writes."""
    transport = Recording()

    async def main() -> None:
        cycle = make_cycle(
            transport,
            method=method,
            expect_100=expect_100,
            keep_alive=keep_alive,
            coalesce=coalesce,
        )
        if expect_100:  # the app reads the body: 100 Continue goes out first
            cycle.more_body = False
            cycle.message_event.set()  # the body has arrived
            await asyncio.wait_for(cycle.receive(), 5)
        for message in messages:
            await cycle.send(message)  # type: ignore[arg-type]

    asyncio.run(main())
    return transport


def sized(body: bytes, status: int = 200) -> list[dict[str, Any]]:
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        },
        {"type": "http.response.body", "body": body},
    ]


def test_a_sized_answer_is_one_write_of_the_same_bytes():
    body = b'{"outputs": []}'
    joined = answer(sized(body))
    plain = answer(sized(body), coalesce=False)
    assert len(plain.writes) == 2  # what uvicorn does alone: head, then body
    assert joined.writes == [b"".join(plain.writes)]


def test_a_closing_answer_is_written_before_the_connection_closes():
    joined = answer(sized(b"bye"), keep_alive=False)
    assert joined.closed
    assert joined.writes[0].endswith(b"\r\n\r\nbye")
    assert b"connection: close" in joined.writes[0]


def test_100_continue_is_written_at_once_and_the_answer_still_joined():
    joined = answer(sized(b"ok"), expect_100=True)
    assert joined.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert len(joined.writes) == 2
    assert joined.writes[1].startswith(b"HTTP/1.1 200 ")
    assert joined.writes[1].endswith(b"ok")


@pytest.mark.parametrize(
    ("messages", "method"),
    [
        (  # chunked (no length): the head must not wait for a body that may be slow to come
            [
                {"type": "http.response.start", "status": 200, "headers": []},
                {"type": "http.response.body", "body": b"part", "more_body": True},
                {"type": "http.response.body", "body": b""},
            ],
            "POST",
        ),
        (sized(b""), "POST"),  # nothing follows the head
        (sized(b"not sent"), "HEAD"),  # a HEAD answer has no body
        (sized(b"x" * (JOIN_BELOW_BYTES + 1)), "POST"),  # too large to copy behind the head
    ],
    ids=["chunked", "empty", "head", "large"],
)
def test_other_answers_are_written_as_uvicorn_writes_them(messages, method):
    joined = answer(messages, method=method)
    plain = answer(messages, method=method, coalesce=False)
    assert joined.writes == plain.writes


def test_a_finished_cycle_is_freed_without_waiting_for_the_garbage_collector():
    gc.disable()
    try:
        cycle = make_cycle(Recording())
        gone = weakref.ref(cycle)
        del cycle
        assert gone() is None  # no reference cycle through the transport it was given
    finally:
        gc.enable()
