"""The inference fast path: ASGI middleware in front of FastAPI that answers the inference routes
itself.

Inference is the one path where the framework's per-request work (routing every route,
dependency solving, request objects, response classes) costs more than the model. The routes
are declared once, in ``routes.py``, like every other route (so they appear in the OpenAPI
document and answer even without this middleware); this middleware takes the app's inference
routes from that route table, matches a ``POST`` against them and answers it with the same
code the route runs (``answer``): the same auth, the same error renderer, the same handlers.
Anything else, including a wrong method on an inference path (405 from FastAPI), passes
through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import TypeVar

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from normserve.service import dataplane
from normserve.service.codecs.offload import JsonOffload
from normserve.service.dataplane import InferOutcome
from normserve.service.errors import RawHeaders, render, send_rendered
from normserve.service.http.auth import BearerKey
from normserve.service.http.body import BodyGate, read_body
from normserve.service.http.client_watch import CLIENT_WATCH, ClientWatch
from normserve.service.http.codings import choose_encoding, compress, decompress
from normserve.service.runtime.state import Runtime

__all__ = ["FastPath", "Protocol", "answer", "inference_route"]

_WANTED = {
    b"authorization",
    b"content-length",
    b"content-encoding",
    b"accept-encoding",
    b"inference-header-content-length",
}


# Work above these sizes leaves the event loop (a thread; zlib lets go of the interpreter lock):
# a compressed body may inflate a thousandfold, a large response takes long to compress.
INFLATE_ON_LOOP_BYTES = 1024
COMPRESS_ON_LOOP_BYTES = 256 * 1024
CLIENT_GONE = 499  # no answer is sent; the status observation and the access log record
T = TypeVar("T")


class ClientGone(Exception):
    """The client left while its request waited: nothing is answered."""


class Protocol(Enum):
    V2 = "v2"
    V1 = "v1"


Endpoint = Callable[..., Awaitable[object]]
_INFERENCE: dict[Endpoint, Protocol] = {}


def inference_route(protocol: Protocol) -> Callable[[Endpoint], Endpoint]:
    """Mark a route endpoint as an inference route of ``protocol``: the fast path answers it."""

    def mark(endpoint: Endpoint) -> Endpoint:
        _INFERENCE[endpoint] = protocol
        return endpoint

    return mark


async def answer(
    scope: Scope,
    receive: Receive,
    runtime: Runtime,
    api_key: BearerKey | None,
    protocol: Protocol,
    model: str,
    version: str | None,
    offload: JsonOffload | None = None,
    gate: BodyGate | None = None,
) -> tuple[int, RawHeaders, bytes]:
    """Status, headers and body for one inference request; every failure through ``render``.
    ``offload`` decodes large JSON bodies beside the server's process; ``gate`` bounds the large
    bodies held and inflated at once."""
    headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}
    try:
        outcome, name, number = await _infer(
            runtime, api_key, receive, headers, protocol, model, version, scope, offload, gate
        )
    except ClientGone:
        return CLIENT_GONE, [], b""
    except Exception as exc:  # ServeError, or a bug that render logs and hides
        return render(exc)
    timing = f"queue;dur={outcome.queue_s * 1000:.3f}, compute;dur={outcome.compute_s * 1000:.3f}"
    response_headers: RawHeaders = [(b"server-timing", timing.encode())]
    body = outcome.body
    if outcome.header_length is None:
        response_headers.append((b"content-type", b"application/json"))
    else:
        response_headers += [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(outcome.header_length).encode()),
        ]
    coding = choose_encoding(headers.get(b"accept-encoding"))
    if coding is not None:
        if len(body) > COMPRESS_ON_LOOP_BYTES:
            body = await asyncio.to_thread(compress, body, coding)
        else:
            body = compress(body, coding)
        response_headers += [(b"content-encoding", coding.encode()), (b"vary", b"Accept-Encoding")]
    scope.setdefault("state", {}).setdefault("log", {}).update(
        model=name,
        version=number,
        batch=outcome.batch_size,
        queue_ms=round(outcome.queue_s * 1000, 3),
        compute_ms=round(outcome.compute_s * 1000, 3),
    )
    return 200, response_headers, body


async def _infer(
    runtime: Runtime,
    api_key: BearerKey | None,
    receive: Receive,
    headers: dict[bytes, str],
    protocol: Protocol,
    model: str,
    version: str | None,
    scope: Scope,
    offload: JsonOffload | None,
    gate: BodyGate | None,
) -> tuple[InferOutcome, str, int]:
    if api_key is not None:
        api_key.check(headers.get(b"authorization"))
    runtime.require_ready().get(model, version)  # 404 before reading a large body
    large = gate is not None and gate.is_large(headers.get(b"content-length"))
    async with gate.large_body() if large else contextlib.nullcontext():  # type: ignore[union-attr]
        return await _serve(
            runtime, receive, headers, protocol, model, version, scope, offload, gate
        )


async def _serve(
    runtime: Runtime,
    receive: Receive,
    headers: dict[bytes, str],
    protocol: Protocol,
    model: str,
    version: str | None,
    scope: Scope,
    offload: JsonOffload | None,
    gate: BodyGate | None,
) -> tuple[InferOutcome, str, int]:
    """Read, inflate and decode the body, then wait for the answer (or the client leaving)."""
    span = scope.get("state", {}).get("span")  # the request's server span when tracing is on
    limit = runtime.settings.max_body_bytes
    body = await read_body(receive, headers.get(b"content-length"), limit)
    coding = headers.get(b"content-encoding")
    if coding is not None and len(body) > INFLATE_ON_LOOP_BYTES:
        if gate is None:
            body = await asyncio.to_thread(decompress, body, coding, limit)
        else:
            body = await gate.inflate(body, coding, limit)
    else:
        body = decompress(body, coding, limit)
    # The newest after any swap. Not require_ready(): a request admitted before a drain began
    # is served even if its body finished arriving after it.
    servable = runtime.store.get(model, version)
    work: Awaitable[InferOutcome]
    if protocol is Protocol.V1:
        work = dataplane.predict(servable, body, runtime.settings.top_k, span, offload)
    else:
        header_length = headers.get(b"inference-header-content-length")
        work = dataplane.infer(servable, body, header_length, span, offload)
    outcome = await _unless_client_leaves(scope.get(CLIENT_WATCH), work)
    return outcome, servable.name, servable.version


async def _unless_client_leaves(watch: ClientWatch | None, work: Awaitable[T]) -> T:
    """``work``'s result, or ``ClientGone`` once the client of the request has left: the wait
    is cancelled (a request still queued leaves the queue). Without a watch (an in-process
    client) it simply waits."""
    task = asyncio.current_task()
    if watch is None or task is None:
        return await work
    if watch.gone:
        if asyncio.iscoroutine(work):
            work.close()
        raise ClientGone
    watch.subscribe(task.cancel)
    try:
        return await work
    except asyncio.CancelledError:
        if watch.gone and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watch.unsubscribe()


class FastPath:
    """``FastPath(inner_app, routes=app.router.routes, runtime=..., api_key=...)``: in front of
    FastAPI (``service.app.App``), or as ordinary middleware."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        runtime: Runtime,
        api_key: BearerKey | None,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.api_key = api_key
        self.offload = JsonOffload()
        self.gate = BodyGate()
        # The stack is built on the first request, after every route was added.
        self.routes = [
            (route, _INFERENCE[route.endpoint])
            for route in routes
            if isinstance(route, APIRoute) and route.endpoint in _INFERENCE
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route, protocol in self.routes:
                match = route.path_regex.match(path)
                if match is None:
                    continue
                params = match.groupdict()
                scope["route"] = route  # what observation reports as the route template
                scope["path_params"] = params
                rendered = await answer(
                    scope,
                    receive,
                    self.runtime,
                    self.api_key,
                    protocol,
                    params["model_name"],
                    params.get("version"),
                    self.offload,
                    self.gate,
                )
                await send_rendered(send, rendered)
                return
        await self.app(scope, receive, send)
