"""Dynamic batching for one model version.

Requests queue; one worker task takes the oldest, then gathers more that are already queued (or
arrive within ``max_queue_delay_s`` of the oldest) until ``max_batch_size`` samples, concatenates
them along axis 0, runs the batch off the event loop on the version's own thread, and splits the
outputs back, one future per request. A failure reaches every waiter of the failed batch and no
one else: a batch of several requests that fails is retried one request at a time, so one
poisonous request cannot fail its neighbours.

Overload is a typed error: a full queue raises ``QueueFull`` (503 with ``Retry-After``) at once;
a request still queued after its timeout gets ``QueueTimeout`` (504). Every asyncio object is
created inside the running loop, on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import InferenceFailed, QueueFull, QueueTimeout, ServeError, Unavailable

__all__ = ["BatchPolicy", "BatchResult", "Batcher", "RunFn"]

log = logging.getLogger("normserve.service")

RunFn = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]
"""Run a batch: inputs by name (batch on axis 0), output names → arrays in that order."""


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    queue_timeout_s: float


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's share of a batch: its outputs (in the order it asked) and its timings."""

    outputs: list[np.ndarray]
    queue_s: float
    compute_s: float
    batch_size: int


class _Item:
    __slots__ = (
        "arrived",
        "enqueued",
        "future",
        "inputs",
        "key",
        "outputs",
        "samples",
        "timer",
        "waiting",
    )

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        samples: int,
        future: asyncio.Future[BatchResult],
        enqueued: float,
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.samples = samples
        self.future = future
        self.enqueued = enqueued  # loop clock, for deadlines (uvloop's ticks in milliseconds)
        self.arrived = time.perf_counter()  # for the reported queue time
        # Requests batch together only when every non-batch dimension agrees.
        self.key = tuple((name, a.shape[1:]) for name, a in inputs.items())
        self.timer: asyncio.TimerHandle | None = None
        self.waiting = True  # counted in the queue depth


class Batcher:
    """The queue and worker of one model version; ``submit`` is its only hot-path call."""

    def __init__(
        self,
        run: RunFn,
        policy: BatchPolicy,
        output_order: Sequence[str],
        *,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
        retry_after_s: int = 1,
    ) -> None:
        self._run = run
        self.policy = policy
        self._output_order = list(output_order)
        self._name = name
        self._on_batch = on_batch
        self._retry_after_s = retry_after_s
        self._pending: deque[_Item] = deque()
        self._queued = 0
        self._busy = False
        self._running: list[_Item] = []
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{name}")

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not yet running)."""
        return self._queued

    @property
    def busy(self) -> bool:
        """A batch is running now."""
        return self._busy

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._wake = asyncio.Event()
        self._worker = loop.create_task(self._work(), name=f"batcher-{self._name}")

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        samples: int,
        outputs: list[str],
        timeout_s: float | None = None,
    ) -> BatchResult:
        """Queue one request of ``samples`` rows and wait for its share of a batch."""
        if self._closed:
            raise Unavailable(f"{self._name} is unloading", retry_after_s=self._retry_after_s)
        if self._queued >= self.policy.max_queue_size:
            raise QueueFull(
                f"{self._name}: queue full ({self.policy.max_queue_size} requests waiting); "
                "retry later",
                retry_after_s=self._retry_after_s,
            )
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._worker is None or self._worker.done():
            self._start(loop)
        timeout = self.policy.queue_timeout_s if timeout_s is None else timeout_s
        item = _Item(inputs, outputs, samples, loop.create_future(), loop.time())
        item.timer = loop.call_later(timeout, self._expire, item, timeout)
        self._pending.append(item)
        self._queued += 1
        self._wake.set()  # type: ignore[union-attr]
        try:
            return await item.future
        except asyncio.CancelledError:
            self._leave_queue(item)
            raise

    def _leave_queue(self, item: _Item) -> None:
        if item.waiting:
            item.waiting = False
            self._queued -= 1
            if item.timer is not None:
                item.timer.cancel()

    def _expire(self, item: _Item, timeout_s: float) -> None:
        if item.waiting and not item.future.done():
            self._leave_queue(item)
            item.future.set_exception(
                QueueTimeout(
                    f"{self._name}: request waited {timeout_s * 1000:.0f} ms in the queue "
                    "without being scheduled"
                )
            )

    def _pop_live(self) -> _Item | None:
        while self._pending:
            item = self._pending.popleft()
            if item.waiting and not item.future.done():
                return item
        return None

    def _peek_live(self) -> _Item | None:
        while self._pending:
            item = self._pending[0]
            if item.waiting and not item.future.done():
                return item
            self._pending.popleft()
        return None

    async def _collect(self) -> list[_Item]:
        """The next batch: the oldest request plus what joins it within the delay."""
        wake = self._wake
        assert wake is not None
        assert self._loop is not None
        while (first := self._pop_live()) is None:
            wake.clear()
            await wake.wait()
        batch, samples = [first], first.samples
        deadline = first.enqueued + self.policy.max_queue_delay_s
        while samples < self.policy.max_batch_size:
            following = self._peek_live()
            if following is None:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), remaining)
                except TimeoutError:
                    break
                continue
            if (
                following.key != first.key
                or samples + following.samples > self.policy.max_batch_size
            ):
                break  # keep FIFO order: it opens the next batch
            self._pending.popleft()
            batch.append(following)
            samples += following.samples
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            self._busy, self._running = True, live
            try:
                await self._execute(live)
            except Exception as exc:  # a bug here must not strand waiters or stop the worker
                log.exception("%s: batch failed unexpectedly", self._name)
                self._fail(live, exc)
            finally:
                self._busy, self._running = False, []

    async def _execute(self, items: list[_Item]) -> None:
        loop = self._loop
        assert loop is not None
        started = time.perf_counter()
        for item in items:
            self._leave_queue(item)
        names = [n for n in self._output_order if any(n in item.outputs for item in items)]
        if len(items) == 1:
            inputs = items[0].inputs
        else:
            inputs = {
                name: np.concatenate([item.inputs[name] for item in items])
                for name in items[0].inputs
            }
        samples = sum(item.samples for item in items)
        try:
            outputs, compute = await loop.run_in_executor(
                self._executor, self._run_checked, inputs, names
            )
        except Exception as exc:
            if len(items) == 1:
                self._fail(items, exc)
                return
            log.warning(
                "%s: a batch of %d requests failed (%s); retrying them one by one",
                self._name,
                len(items),
                exc,
            )
            for item in items:
                await self._execute([item])
            return
        if self._on_batch is not None:
            self._on_batch(samples, compute)
        by_name = dict(zip(names, outputs, strict=True))
        offset = 0
        for item in items:
            end = offset + item.samples
            if not item.future.done():
                share = [by_name[n][offset:end] for n in item.outputs]
                item.future.set_result(BatchResult(share, started - item.arrived, compute, samples))
            offset = end

    def _run_checked(
        self, inputs: dict[str, np.ndarray], names: list[str]
    ) -> tuple[list[np.ndarray], float]:
        """Runs on the version's thread: the outputs (which must keep the batch's row count)
        and the seconds the model took."""
        samples = next(iter(inputs.values())).shape[0]
        start = time.perf_counter()
        outputs = self._run(inputs, names)
        seconds = time.perf_counter() - start
        for name, array in zip(names, outputs, strict=True):
            if array.ndim == 0 or array.shape[0] != samples:
                raise InferenceFailed(
                    f"{self._name}: output {name!r} has shape {list(array.shape)} for a batch "
                    f"of {samples}; the model does not keep the batch axis"
                )
        return outputs, seconds

    def _fail(self, items: list[_Item], exc: BaseException) -> None:
        if not isinstance(exc, ServeError):
            log.error("%s: inference failed: %s", self._name, exc)
            exc = InferenceFailed(f"{self._name}: inference failed: {exc}")
        for item in items:
            self._leave_queue(item)
            if not item.future.done():
                item.future.set_exception(exc)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False when ``timeout_s`` ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queued or self._busy:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Stop the worker; anything still queued is answered 503."""
        self._closed = True
        running = self._running
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        gone = Unavailable(f"{self._name} was unloaded", retry_after_s=self._retry_after_s)
        self._fail(running, gone)
        while (item := self._pop_live()) is not None:
            self._fail([item], gone)
        self._executor.shutdown(wait=False)
