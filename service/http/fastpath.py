"""The inference lane: ``POST .../infer`` and ``:predict`` served as plain ASGI.

Inference is the one path where the framework's per-request work (middleware stack, routing,
dependency solving, request objects) costs more than the model: this lane, placed in front of
the FastAPI app, matches the two inference paths itself and answers them with the same
handlers, the same error table and the same auth as the routes; everything else passes through
to FastAPI untouched.
"""

from __future__ import annotations

import logging
import re

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from normserve.service import dataplane
from normserve.service.dataplane import InferOutcome
from normserve.service.errors import ServeError
from normserve.service.http.auth import BearerKey
from normserve.service.http.body import read_body
from normserve.service.http.codings import choose_encoding, compress, decompress
from normserve.service.runtime.state import Runtime

__all__ = ["InferLane"]

log = logging.getLogger("normserve.service")

_V2 = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
_V1 = re.compile(r"/v1/models/(?P<model>[^/]+):predict")
_V2_ROUTES = ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer")
_V1_ROUTE = "/v1/models/{model_name}:predict"
_WANTED = {
    b"authorization",
    b"content-length",
    b"content-encoding",
    b"accept-encoding",
    b"inference-header-content-length",
}


class InferLane:
    def __init__(self, app: ASGIApp, runtime: Runtime, api_key: BearerKey | None) -> None:
        self.app = app
        self.runtime = runtime
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] != "POST":
            if _V2.fullmatch(path) or _V1.fullmatch(path):
                message = f"method {scope['method']} is not allowed on {path}; use POST"
                await _send(send, 405, orjson.dumps({"error": message}), _json({"Allow": "POST"}))
                return
        else:
            if match := _V2.fullmatch(path):
                version = match["version"]
                scope["route_template"] = _V2_ROUTES[version is not None]
                await self._answer(scope, receive, send, match["model"], version, v1=False)
                return
            if match := _V1.fullmatch(path):
                scope["route_template"] = _V1_ROUTE
                await self._answer(scope, receive, send, match["model"], None, v1=True)
                return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: str,
        version: str | None,
        *,
        v1: bool,
    ) -> None:
        headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}
        try:
            outcome, name, number = await self._infer(receive, headers, model, version, v1=v1)
        except ServeError as exc:
            await _send(send, exc.status, orjson.dumps({"error": exc.message}), _json(exc.headers))
            return
        except Exception:
            log.exception("internal error on POST %s", scope["path"])
            body = orjson.dumps({"error": "internal server error (a bug: see the server log)"})
            await _send(send, 500, body, _json({}))
            return
        timing = (
            f"queue;dur={outcome.queue_s * 1000:.3f}, compute;dur={outcome.compute_s * 1000:.3f}"
        )
        response_headers = [(b"server-timing", timing.encode())]
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
            body = compress(body, coding)
            response_headers += [
                (b"content-encoding", coding.encode()),
                (b"vary", b"Accept-Encoding"),
            ]
        scope.setdefault("state", {})["log"] = {
            "model": name,
            "version": number,
            "batch": outcome.batch_size,
            "queue_ms": round(outcome.queue_s * 1000, 3),
            "compute_ms": round(outcome.compute_s * 1000, 3),
        }
        await _send(send, 200, body, response_headers)

    async def _infer(
        self,
        receive: Receive,
        headers: dict[bytes, str],
        model: str,
        version: str | None,
        *,
        v1: bool,
    ) -> tuple[InferOutcome, str, int]:
        runtime = self.runtime
        if self.api_key is not None:
            self.api_key.check(headers.get(b"authorization"))
        runtime.require_ready().get(model, version)  # 404 before reading a large body
        limit = runtime.settings.max_body_bytes
        body = await read_body(receive, headers.get(b"content-length"), limit)
        body = decompress(body, headers.get(b"content-encoding"), limit)
        # The newest after any swap. Not require_ready(): a request admitted before a drain
        # began is served even if its body finished arriving after it.
        servable = runtime.store.get(model, version)
        if v1:
            outcome = await dataplane.predict(servable, body, runtime.settings.top_k)
        else:
            outcome = await dataplane.infer(
                servable, body, headers.get(b"inference-header-content-length")
            )
        return outcome, servable.name, servable.version


def _json(extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json")] + [
        (k.lower().encode(), v.encode()) for k, v in extra.items()
    ]


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
