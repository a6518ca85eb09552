"""Decoding large JSON bodies in a worker process, so that no event loop ever waits for one.

JSON parsing (orjson) and turning nested lists into arrays (numpy) hold Python's interpreter
lock for as long as they run: half a second and more for a body of tens of MiB, which a thread
does not hide from the event loop. A V2 body whose JSON part is at least ``OFFLOAD_BYTES``, or
a V1 body that large, is therefore decoded in a worker process by the codec's own functions
(``decode_infer_request``, ``decode_predict_request``, so the checks and the messages are the
same) against a ``ModelView`` of the model's config; the decoded arrays come back instead of
the text. The server process spends only the copies of the body out and the arrays back.

One worker (started on first use, with ``forkserver``: the server has threads that ``fork``
must not copy), at a lower scheduling priority than the server, so large bodies also queue
behind each other instead of taking every core.
A worker that dies (out of memory on a hostile body) is replaced; its request gets a 503.
A server that dies without shutting the pool down (``kill -9``, the OOM killer) takes its
worker with it: the worker watches the server's process and exits when it is gone (and with
it the forkserver, which lives as long as a process it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from normserve.model_repository import ModelConfig, TensorSpec
from normserve.service.codecs.v1 import PredictRequest, decode_predict_request
from normserve.service.codecs.v2 import (
    InferRequest,
    decode_infer_request,
    json_booleans_possible,
    parse_json_body,
    split_body,
)
from normserve.service.errors import Unavailable

__all__ = ["OFFLOAD_BYTES", "JsonOffload", "ModelView"]

log = logging.getLogger("normserve.service")

OFFLOAD_BYTES = 256 * 1024
"""JSON text of at least this many bytes is decoded in the worker process."""
R = TypeVar("R")


@dataclass(frozen=True)
class ModelView:
    """What decoding reads of a loaded model, without its session: picklable. ``of`` takes it
    from a loaded model (axes the graph ties together included, when the model knows them)."""

    config: ModelConfig
    tied_axes: tuple[tuple[tuple[str, int], ...], ...] = ()

    @classmethod
    def of(cls, model: Any) -> ModelView:
        return cls(model.config, tuple(model.tied_axes))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> int:
        return self.config.version

    def input_spec(self, name: str) -> TensorSpec | None:
        return self.config.input_spec(name)

    def output_spec(self, name: str) -> TensorSpec | None:
        return self.config.output_spec(name)


def _decode_v2(model: ModelView, body: bytes, header_length: str | None) -> InferRequest:
    """In the worker: what ``dataplane.infer`` decodes in the server for a small body."""
    header, binary = split_body(body, header_length)
    return decode_infer_request(
        parse_json_body(header),
        model,  # type: ignore[arg-type]
        binary,
        booleans_possible=json_booleans_possible(header),
    )


def _decode_v1(model: ModelView, body: bytes, default_top_k: int) -> PredictRequest:
    """In the worker: what ``dataplane.predict`` decodes in the server for a small body."""
    return decode_predict_request(parse_json_body(body), model, default_top_k)  # type: ignore[arg-type]


def _start_worker(server_pid: int) -> None:
    """In the worker: yield the CPU to the server's event loop and inference (niceness +10),
    and leave when the server is gone (``_exit_with``)."""
    with contextlib.suppress(OSError):
        os.nice(10)
    threading.Thread(
        target=_exit_with, args=(server_pid,), name="normserve-offload-watch", daemon=True
    ).start()


def _exit_with(server_pid: int) -> None:
    """Return never; end this process once ``server_pid`` has ended. The worker's parent is
    the forkserver, not the server, so the parent-death signal cannot tell; a pidfd becomes
    readable when its process ends (Linux), elsewhere the pid is polled each second."""
    try:
        pidfd = os.pidfd_open(server_pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
    else:
        while True:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass  # alive, another user's (a reused pid): keep watching
            time.sleep(1.0)
    os._exit(0)


def json_part(body: bytes, header_length: str | None) -> int:
    """How many bytes of a V2 body are JSON (all of it, unless the binary extension says)."""
    if header_length is None:
        return len(body)
    text = header_length.strip()
    return min(int(text), len(body)) if text.isascii() and text.isdigit() and len(text) < 19 else 0


class JsonOffload:
    """The worker process and the two decoders that use it."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    async def infer_request(
        self, model: Any, body: bytes, header_length: str | None
    ) -> InferRequest:
        """``decode_infer_request`` of ``body`` for ``model`` (a loaded model), in the worker."""
        return await self._run(_decode_v2, ModelView.of(model), body, header_length)

    async def predict_request(self, model: Any, body: bytes, default_top_k: int) -> PredictRequest:
        """``decode_predict_request`` of ``body`` for ``model``, in the worker."""
        return await self._run(_decode_v1, ModelView.of(model), body, default_top_k)

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        pool = self._worker()
        try:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool:
            log.error("the JSON decoding process died (out of memory?); starting another")
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise Unavailable("the request body could not be decoded; retry later") from None

    def _worker(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=context,
                    initializer=_start_worker,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
