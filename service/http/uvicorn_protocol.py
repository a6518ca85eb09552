"""uvicorn's httptools protocol, bounded per connection against clients that behave badly.

uvicorn parses HTTP/1.1 with httptools and, left alone, buffers whatever a connection sends: a
head of any size, any number of pipelined requests, answers its client never reads, and it waits
forever for a slow head or body. This subclass keeps uvicorn's parser and request cycles and
bounds each connection (``ConnectionLimits``, from the settings):

- **Head.** The request line and headers together are counted as they arrive, before the
  parser holds them in full: past ``max_header_bytes`` the answer is 431, and so it is for a
  head of more than ``max_header_count`` fields (counted once the head is complete: the byte
  bound already keeps it small).
- **Time.** A head must be complete within ``header_timeout_s`` of the connection being ready
  for it (opened, or its previous answer sent), and each 64 KiB of a body (or the rest of it)
  must arrive within ``body_timeout_s``; time during which the server itself was not reading
  does not count. Late: 408 where an answer can still be sent; a connection that never sent a
  byte is closed silently (an idle keep-alive client must not read a stray 408 as the answer
  to its next request).
- **Memory.** At most ``max_pipelined_requests`` requests are parsed ahead of the one being
  answered, and while more than ``max_unsent_bytes`` of answers wait unsent (a client that
  does not read), the connection is not read and no further request of it is started.
- **Clients that leave.** Each request's scope carries a ``ClientWatch``: when the connection
  is lost, the watch of every request of it fires (the inference fast path cancels the wait
  for its batch). End of input right after a request is a half-close (``shutdown(SHUT_WR)``):
  the requests are answered, then the connection closes. End of input later, while a request
  waits, is a client that has gone (a closed socket looks the same on the wire).
- **Errors.** What this layer answers (400 for unparseable HTTP, 408, 431) is
  ``{"error": ...}`` from the app's one renderer, with ``connection: close``; the connection
  then stops reading requests and discards input for a moment before closing ("lingering
  close"), so that a client still sending reads the answer instead of a reset.

Over 300 lines because the parser callbacks, flow control, deadlines and refusals of one
connection are one state machine over the same fields.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from normserve.service.errors import ServeError, render
from normserve.service.http.client_watch import CLIENT_WATCH, ClientWatch
from normserve.service.http.coalesce import HeadWithBody
from normserve.service.http.heap_trim import HeapTrimmer
from normserve.service.settings import Settings

__all__ = [
    "BODY_PROGRESS_BYTES",
    "STATUSES",
    "ConnectionLimits",
    "GuardedHttpToolsProtocol",
    "protocol_class",
]

log = logging.getLogger("normserve.service")

STATUSES = (400, 408, 431)
"""What this layer answers itself, before a request reaches the app."""
BODY_PROGRESS_BYTES = 64 * 1024
"""A body must deliver this much (or its rest) within each ``body_timeout_s``."""
HALF_CLOSE_WINDOW_S = 0.1
"""End of input this soon after a request's last byte is a half-close: the client is answered."""
LINGER_S = 2.0
"""After an error answer: how long input is read and discarded before the connection closes."""
LINGER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection bounds (see ``Settings`` for each)."""

    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float
    body_timeout_s: float
    max_pipelined_requests: int
    max_unsent_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_pipelined_requests=settings.max_pipelined_requests,
            max_unsent_bytes=settings.max_unsent_bytes,
        )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the reason is on the protocol."""


class _GatedFlow(FlowControl):
    """uvicorn's flow control, except that reading resumes only when the protocol allows it.
    ``detach`` ends the protocol's reference cycle with it when the connection is lost."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol: GuardedHttpToolsProtocol | None = protocol

    def resume_reading(self) -> None:
        protocol = self._protocol
        if self.read_paused and protocol is not None and protocol.may_read():
            super().resume_reading()
            protocol.reading_resumed()

    def detach(self) -> None:
        self._protocol = None


def protocol_class(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to these settings."""
    limits = ConnectionLimits.from_settings(settings)
    attributes = {"limits": limits, "trimmer": HeapTrimmer()}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attributes)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; ``limits`` (and the server's ``trimmer``) are set on the subclass that
    ``protocol_class`` makes."""

    limits: ClassVar[ConnectionLimits]
    trimmer: ClassVar[HeapTrimmer]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # the next bytes belong to a request head
        self._message_begun = False  # some of the current message has arrived
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: a terminator may straddle
        self._completed_in_feed = False
        self._refusal: tuple[int, str] | None = None  # set by a parser callback
        self._pending_refusal: tuple[int, str] | None = None  # after the answers before it
        self._refused = False  # no more parsing
        self._discarding = 0  # > 0: lingering close, bytes discarded so far + 1
        self._running: RequestResponseCycle | None = None  # answering now
        self._half_closed = False
        self._message_done_at = 0.0
        self._paused_since_message = False
        self._head_deadline = 0.0
        self._body_deadline: float | None = None  # None: no body arriving
        self._body_progress = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.trimmer.opened()
        self.flow = _GatedFlow(transport, self)
        transport.set_write_buffer_limits(high=self.limits.max_unsent_bytes)
        self._head_deadline = self.loop.time() + self.limits.header_timeout_s
        self._arm(self._head_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        cycles = [cycle for cycle, _ in self.pipeline]
        if self._running is not None:
            cycles.append(self._running)
        super().connection_lost(exc)
        for cycle in cycles:
            self._abandon(cycle)
        self.pipeline.clear()
        self._running = None
        if isinstance(self.flow, _GatedFlow):
            self.flow.detach()  # no cycle left for the garbage collector to find
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.trimmer.closed(self.loop)

    def eof_received(self) -> bool | None:
        """``True`` keeps the connection open to answer a client that half-closed."""
        if self._discarding or self._message_begun:
            return None  # lingering, or a message that can never complete: close
        if self._running is None and not self.pipeline:
            return None  # nothing to answer
        recent = self.loop.time() - self._message_done_at <= HALF_CLOSE_WINDOW_S
        if recent or self._paused_since_message:
            self._half_closed = True
            return True
        return None  # it left while its request waited: connection_lost cancels it

    # -- reading ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._discarding:
            self._discarding += len(data)
            if self._discarding > LINGER_BYTES:
                self.transport.close()
            return
        if self._refused:
            return
        if self._in_head and not self._head_fits(data):
            self._refuse(
                431,
                f"request line and headers exceed {self.limits.max_header_bytes} bytes "
                "(NORMSERVE_MAX_HEADER_BYTES)",
            )
            return
        was_in_head = self._in_head
        self._completed_in_feed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is None:
                log.warning("Invalid HTTP request received.")
            self._refuse(*(self._refusal or (400, _MALFORMED)))
            return
        if self._in_head and not self._refused:
            if self._completed_in_feed:
                # A pipelined head began inside this read: counted from the next one (the
                # bound then holds within one read).
                self._head_bytes = 0
            elif was_in_head:
                self._head_bytes += len(data)
            self._head_tail = data[-3:]

    def _head_fits(self, data: bytes) -> bool:
        """Whether the head in progress ends within the limit, counting ``data``."""
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            return True
        if room <= 0:
            return False
        if data.find(b"\r\n\r\n", 0, room) != -1:
            return True
        return bool(self._head_tail) and b"\r\n\r\n" in self._head_tail + data[:3]

    def may_read(self) -> bool:
        """Whether reading may resume: not refused, answers flowing, the pipeline not full,
        and no pipelined request holding a body the size of uvicorn's own bound."""
        if self._discarding:
            return True
        if self._refused or self.flow.write_paused:
            return False
        if len(self.pipeline) >= self.limits.max_pipelined_requests:
            return False
        queued = self.pipeline and self.cycle is not self._running
        return not (queued and len(self.cycle.body) > HIGH_WATER_LIMIT)

    def reading_resumed(self) -> None:
        if self._body_deadline is not None:  # a pause of ours is no fault of the client's
            self._body_deadline = self.loop.time() + self.limits.body_timeout_s

    def _pause(self) -> None:
        self.flow.pause_reading()
        self._paused_since_message = True

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_begun = True
        self.scope[CLIENT_WATCH] = ClientWatch()  # type: ignore[typeddict-unknown-key]

    def on_headers_complete(self) -> None:
        # Counted here, not per header: the byte bound already keeps the list small.
        if len(self.headers) > self.limits.max_header_count:
            self._refusal = (
                431,
                f"more than {self.limits.max_header_count} header fields "
                "(NORMSERVE_MAX_HEADER_COUNT)",
            )
            raise _Refused
        super().on_headers_complete()
        self.cycle.transport = HeadWithBody(self.transport, self.cycle)  # type: ignore[assignment]
        self._in_head = False
        self._head_bytes = 0
        self._body_deadline = self.loop.time() + self.limits.body_timeout_s
        self._body_progress = 0
        self._arm(self._body_deadline)
        if len(self.pipeline) >= self.limits.max_pipelined_requests:
            self._pause()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._body_progress += len(body)
        if self._body_progress >= BODY_PROGRESS_BYTES:
            self._body_progress = 0
            self._body_deadline = self.loop.time() + self.limits.body_timeout_s

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._message_begun = False
        self._completed_in_feed = True
        self._head_bytes = 0
        self._head_tail = b""
        self._body_deadline = None
        self._message_done_at = self.loop.time()
        self._paused_since_message = self.flow.read_paused

    # -- answering ------------------------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if self.flow.write_paused and not self.transport.is_closing():
            self.pipeline.append((cycle, app))  # next to start, once answers drain
            self._pause()
            return
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        self._running = None
        super().on_response_complete()
        if self._running is not None or self.pipeline or self.transport.is_closing():
            return
        if self._pending_refusal is not None:
            self._answer_and_linger(*self._pending_refusal)
        elif self._half_closed:
            self.transport.close()
        else:
            self._head_deadline = self.loop.time() + self.limits.header_timeout_s
            self._arm(self._head_deadline)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._running is None and self.pipeline and not self.transport.is_closing():
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        self.flow.resume_reading()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"malformed HTTP request: {msg}")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and stop: now, or after the answers to earlier requests."""
        self._refused = True
        self._pause()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The refused bytes are this request's own (its body): the refusal is its answer.
            if cycle is self._running and not cycle.response_started:
                self._abandon(cycle)
                self._running = None
            elif cycle is not self._running:
                self.pipeline.remove(next(p for p in self.pipeline if p[0] is cycle))
        if self._running is not None or self.pipeline:
            self._pending_refusal = (status, message)
        else:
            self._answer_and_linger(status, message)

    def _answer_and_linger(self, status: int, message: str) -> None:
        error = ServeError(message)
        error.status = status
        code, headers, body = render(error)
        headers = [
            *self.server_state.default_headers,
            *headers,
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        parts = [STATUS_LINE[code]]
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"\r\n", body]
        self.transport.write(b"".join(parts))
        self._discarding = 1
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _abandon(self, cycle: RequestResponseCycle) -> None:
        """The client of ``cycle`` is gone: its app sees a disconnect and sends nothing."""
        if not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        watch = cycle.scope.get(CLIENT_WATCH)
        if isinstance(watch, ClientWatch):
            watch.notify()

    # -- timeouts ---------------------------------------------------------------------------------

    def _arm(self, at: float) -> None:
        """Check the deadlines at ``at`` (or earlier, if a check is already due before)."""
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self._discarding or self._refused:
            return
        now = self.loop.time()
        limits = self.limits
        if self._body_deadline is not None:
            if self.flow.read_paused:
                self._body_deadline = now + limits.body_timeout_s
            if now < self._body_deadline:
                self._arm(self._body_deadline)
                return
            self._time_out(
                f"request body: less than {BODY_PROGRESS_BYTES // 1024} KiB arrived in "
                f"{limits.body_timeout_s:g} s (NORMSERVE_BODY_TIMEOUT_S)"
            )
        elif self._in_head and self._running is None and not self.pipeline:
            if now < self._head_deadline:
                self._arm(self._head_deadline)
                return
            if not self._message_begun:
                self.transport.close()  # never sent a byte of a request: close quietly
                return
            self._time_out(
                f"request head not complete within {limits.header_timeout_s:g} s "
                "(NORMSERVE_HEADER_TIMEOUT_S)"
            )

    def _time_out(self, message: str) -> None:
        cycle = self._running
        if cycle is not None and (cycle.response_started or cycle is not self.cycle):
            # An answer is being written, or the late message waits behind one: no room
            # for a 408 on this connection.
            self._abandon(self.cycle)
            self.transport.close()
            return
        self._refuse(408, message)


_MALFORMED = "malformed HTTP request: Invalid HTTP request received."
