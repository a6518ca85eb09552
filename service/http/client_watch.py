"""How a request's handler hears, without a task of its own, that its client has gone.

The HTTP protocol (``uvicorn_protocol.py``) puts a ``ClientWatch`` in every request's scope
under ``CLIENT_WATCH`` and fires it when the connection is lost; a handler that waits (the
inference fast path, for its batch) subscribes a callback for as long as it waits. An ASGI
``receive()`` task per request would tell the same, at the price of a task and a wait on two
futures for every inference.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CLIENT_WATCH", "ClientWatch"]

CLIENT_WATCH = "normserve.client_watch"
"""The scope key of a request's ``ClientWatch`` (absent under other servers and in-process)."""


class ClientWatch:
    """``subscribe`` a callback (called at most once, on the event loop, when the client has
    gone), ``unsubscribe`` when done waiting; ``gone`` says whether it has happened."""

    __slots__ = ("_callback", "gone")

    def __init__(self) -> None:
        self.gone = False
        self._callback: Callable[[], object] | None = None

    def subscribe(self, callback: Callable[[], object]) -> None:
        self._callback = callback

    def unsubscribe(self) -> None:
        self._callback = None

    def notify(self) -> None:
        """The client has gone: call the subscriber, once."""
        if not self.gone:
            self.gone = True
            callback, self._callback = self._callback, None
            if callback is not None:
                callback()
