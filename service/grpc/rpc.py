"""How a handler becomes a gRPC method: parse the request bytes, check the key, run, answer or
fail through the one status table; count the call as in flight (for the drain) and write its
access-log line. The twin of the HTTP side's observation middleware and dependencies.

Every method takes its request as bytes and parses it itself, so a message that is not protobuf
is INVALID_ARGUMENT rather than gRPC's INTERNAL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from normserve.service.codecs import inference_pb2 as pb
from normserve.service.errors import BadRequest, Forbidden
from normserve.service.grpc.status import status_of
from normserve.service.http.auth import BearerKey
from normserve.service.runtime.state import Runtime
from normserve.service.telemetry.request_ids import request_id

if TYPE_CHECKING:
    from normserve.service.telemetry.tracing import RequestSpan, Tracing

__all__ = ["Access", "Call", "Calls", "Handler", "unserved"]

access_log = logging.getLogger("normserve.access")


class Access(Enum):
    OPEN = "open"
    API_KEY = "inference key"
    ADMIN_KEY = "admin key"


@dataclass(slots=True)
class Call:
    """What a handler may add to its call: access-log fields, and phase spans under the call's
    server span when tracing is on."""

    log: dict[str, Any] = field(default_factory=dict)
    span: RequestSpan | None = None


Handler = Callable[[Any, Call], Awaitable[Message | bytes]]
# Server-side failures, as HTTP's 5xx: the span is marked failed.
_FAILED = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
}


class _Context(Protocol):
    def invocation_metadata(self) -> Any: ...
    def set_trailing_metadata(self, metadata: Any) -> None: ...
    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None: ...


def _metadata(context: _Context, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else None
    return None


def _request_id(context: _Context) -> str:
    return request_id(_metadata(context, "x-request-id"))


def _parse(message_type: type[Message], data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise BadRequest(
            f"request is not a valid {message_type.DESCRIPTOR.full_name} message"
        ) from None


class Calls:
    """The keys and the runtime every method of one service checks and counts against, and
    the tracing its calls report to (None: off)."""

    def __init__(
        self,
        service: str,
        runtime: Runtime,
        api_key: BearerKey | None,
        admin_key: BearerKey | None,
        tracing: Tracing | None = None,
    ) -> None:
        self.service = service
        self.runtime = runtime
        self.api_key = api_key
        self.admin_key = admin_key
        self.tracing = tracing

    def _start(self, rpc: str, context: _Context) -> Call:
        if self.tracing is None:
            return Call()
        carrier = {
            item.key: item.value
            for item in context.invocation_metadata() or ()
            if isinstance(item.value, str)
        }
        attributes = {"rpc.system": "grpc", "rpc.service": self.service, "rpc.method": rpc}
        span = self.tracing.server_span(f"{self.service}/{rpc}", carrier, attributes)
        return Call(log={"trace_id": span.trace_id}, span=span)

    def _finish(
        self, rpc: str, call: Call, request_id: str, code: grpc.StatusCode, start: float
    ) -> None:
        if call.span is not None:
            call.span.set_attributes(
                {"rpc.grpc.status_code": code.value[0], "normserve.request_id": request_id}
            )
            if code in _FAILED:
                call.span.fail(f"gRPC {code.name}")
            call.span.end()
        self._log(rpc, request_id, code, start, call.log)

    def _authorize(self, access: Access, context: _Context) -> None:
        if access is Access.API_KEY:
            if self.api_key is not None:
                self.api_key.check(_metadata(context, "authorization"))
        elif access is Access.ADMIN_KEY:
            if self.admin_key is None:
                raise Forbidden(
                    "the repository API is disabled: set NORMSERVE_ADMIN_KEY to enable it"
                )
            self.admin_key.check(_metadata(context, "authorization"))

    def _log(
        self, rpc: str, request_id: str, code: grpc.StatusCode, start: float, fields: dict
    ) -> None:
        if self.runtime.settings.access_log:
            line = {
                "request_id": request_id,
                "rpc": rpc,
                "status": code.name,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                **fields,
            }
            access_log.info("grpc", extra={"fields": line})

    def unary(
        self, rpc: str, handler: Handler, request_type: type[Message], access: Access
    ) -> grpc.RpcMethodHandler:
        """One unary method: parse, authorize, handle; errors through the one table."""

        async def method(data: bytes, context: _Context) -> bytes:
            start = time.perf_counter()
            request_id = _request_id(context)
            call = self._start(rpc, context)
            code = grpc.StatusCode.OK
            self.runtime.in_flight += 1
            try:
                self._authorize(access, context)
                answer = await handler(_parse(request_type, data), call)
                context.set_trailing_metadata((("x-request-id", request_id),))
                return answer if isinstance(answer, bytes) else answer.SerializeToString()
            except Exception as exc:
                code, message, trailing = status_of(exc)
                await context.abort(code, message, (*trailing, ("x-request-id", request_id)))
                raise  # abort raises; never reached
            finally:
                self.runtime.in_flight -= 1
                self._finish(rpc, call, request_id, code, start)

        return grpc.unary_unary_rpc_method_handler(method)

    def stream_infer(self, infer: Callable[[Any, Call], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
        """``ModelStreamInfer``: each request answered in order on the stream; a failure is that
        response's ``error_message`` and the stream goes on, as Triton does. Each request (not
        the stream) counts as in flight, so an idle stream does not hold up a drain."""

        async def method(requests: AsyncIterator[bytes], context: _Context) -> AsyncIterator[bytes]:
            try:
                self._authorize(Access.API_KEY, context)
            except Exception as exc:
                code, message, trailing = status_of(exc)
                await context.abort(code, message, trailing)
            request_id = _request_id(context)
            async for data in requests:
                start = time.perf_counter()
                call = self._start("ModelStreamInfer", context)
                code = grpc.StatusCode.OK
                self.runtime.in_flight += 1
                try:
                    body = await infer(_parse(pb.ModelInferRequest, data), call)
                    answer = pb.ModelStreamInferResponse(
                        infer_response=pb.ModelInferResponse.FromString(body)
                    )
                except Exception as exc:
                    code, message, _ = status_of(exc)
                    answer = pb.ModelStreamInferResponse(error_message=message)
                finally:
                    self.runtime.in_flight -= 1
                    self._finish("ModelStreamInfer", call, request_id, code, start)
                yield answer.SerializeToString()

        return grpc.stream_stream_rpc_method_handler(method)


def unserved(rpc: str, what: str) -> grpc.RpcMethodHandler:
    """A method of Triton's service that normserve does not serve: UNIMPLEMENTED, by name."""

    async def method(_data: bytes, context: _Context) -> bytes:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{rpc}: {what} is not supported by normserve", ()
        )
        return b""

    return grpc.unary_unary_rpc_method_handler(method)
