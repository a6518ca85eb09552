"""Dynamic batching for one model version.

Requests queue. When no batch is running, the batcher takes the oldest request plus those
queued behind it that fit (same non-batch shapes, at most ``max_batch_size`` samples), waiting
until ``max_queue_delay_s`` after the oldest arrived for more to join unless the batch is
already full. The batch goes to the version's own thread, which concatenates the inputs along
axis 0, runs the model and slices the outputs back, one future per request. A batch of at most
``inline_samples`` samples (a size whose run costs less than handing it to the thread, from
timings taken at load) runs inline instead: on the event loop, one loop turn after the first
request of the batch arrived, so that every request read in that turn joins it. A failure reaches
every waiter of the failed batch and no one else: a batch of several requests that fails is
retried one request at a time on that thread, so one poisonous request cannot fail its
neighbours.

Overload is a typed error: a full queue raises ``QueueFull`` (503 with ``Retry-After``) at once;
a request still queued after its timeout gets ``QueueTimeout`` (504). A request whose wait is
cancelled (its client left) leaves the queue at once, freeing its slot, and never runs; one
cancelled while its batch runs is computed with its batch and its share dropped. Both are
reported to ``on_cancel`` (``"queued"`` or ``"running"``). The hot path has no task
and no event: ``submit`` dispatches directly when the model is idle, and the thread's result
comes back with one ``call_soon_threadsafe``. Loop objects (futures, timers) are created inside
the running loop.

Over 300 lines because the queue, the batch thread and their hand-off form one state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from normserve.service.errors import (
    BadRequest,
    InferenceFailed,
    QueueFull,
    QueueTimeout,
    ServeError,
    Unavailable,
)

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
    """One request's share of a batch: its outputs (in the order it asked), its timings, and
    the batch (its number in this batcher, counted from 1, and its samples)."""

    outputs: list[np.ndarray]
    queue_s: float
    compute_s: float
    batch_size: int
    batch_id: int = 0


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

    @property
    def live(self) -> bool:
        return self.waiting and not self.future.done()


# What the thread hands back for each request: its outputs by name, or its failure.
_Outcome = dict[str, np.ndarray] | BaseException


@dataclass(frozen=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    items: list[_Item]
    inputs: list[dict[str, np.ndarray]]
    names: list[str]
    started: float
    number: int


class Batcher:
    """The queue and thread of one model version; ``submit`` is its only hot-path call."""

    def __init__(
        self,
        run: RunFn,
        policy: BatchPolicy,
        output_order: Sequence[str],
        *,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
        on_cancel: Callable[[str], object] | None = None,
        retry_after_s: int = 1,
        input_sensitive: bool = False,
        inline_samples: int = 0,
    ) -> None:
        self._run = run
        # Batches of at most this many samples run on the event loop itself (they cost less
        # than the thread hand-off; see make_servable): no cross-thread wake-up. 0: never.
        self.inline_samples = inline_samples
        self._flush_scheduled = False
        # A model whose inputs' sizes or integer values may make it fail (LoadedModel.
        # input_sensitive): a lone request failing is the request's fault then (400), not
        # the server's (500).
        self._input_sensitive = input_sensitive
        self.policy = policy
        self._output_order = list(output_order)
        self._name = name
        self._on_batch = on_batch
        self._on_cancel = on_cancel
        self._retry_after_s = retry_after_s
        self._pending: deque[_Item] = deque()
        self._queued = 0
        self._running: list[_Item] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay_timer: asyncio.TimerHandle | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._batches = itertools.count(1)
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not yet running)."""
        return self._queued

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
        if loop is not self._loop:
            self._loop = loop
            self._delay_timer = None
            self._flush_scheduled = False  # one scheduled on a loop now gone never runs
        timeout = self.policy.queue_timeout_s if timeout_s is None else timeout_s
        item = _Item(inputs, outputs, samples, loop.create_future(), loop.time())
        item.timer = loop.call_later(timeout, self._expire, item, timeout)
        self._pending.append(item)
        self._queued += 1
        self._dispatch()
        try:
            return await item.future
        except asyncio.CancelledError:
            stage = "queued" if item.waiting else "running"
            self._leave_queue(item)
            if self._on_cancel is not None:
                self._on_cancel(stage)
            self._dispatch()  # its place may have held the next batch back
            raise

    # -- on the event loop --------------------------------------------------------------------

    def _leave_queue(self, item: _Item) -> None:
        if item.waiting:
            item.waiting = False
            self._queued -= 1
            if item.timer is not None:
                item.timer.cancel()

    def _expire(self, item: _Item, timeout_s: float) -> None:
        if item.live:
            self._leave_queue(item)
            item.future.set_exception(
                QueueTimeout(
                    f"{self._name}: request waited {timeout_s * 1000:.0f} ms in the queue "
                    "without being scheduled"
                )
            )

    def _dispatch(self) -> None:
        """Start the next batch if none is running and one is due (full, or its wait is up).

        With inline batches, the batch is formed one loop turn later (``_flush``): every
        request whose bytes arrived in this turn joins it, which is where batches come from
        without a thread to be busy."""
        if self.inline_samples:
            if not self._flush_scheduled and self._pending and not self._closed:
                self._flush_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._flush)
            return
        self._start_batch()

    def _flush(self) -> None:
        """Start the next due batch: a small one runs now, on the loop, and its requests are
        answered; a larger one goes to the thread. A further batch waits one loop turn, so that
        other connections are served in between (the loop is held for one small batch at
        most)."""
        self._flush_scheduled = False
        job = self._start_batch()
        if job is not None:
            self._finish(job, *self._run_job(job))

    def _start_batch(self) -> _Job | None:
        """The next due batch, handed to the thread, or returned when it is small enough to
        run inline; None if there is none."""
        if self._running or self._closed:
            return None
        pending = self._pending
        while pending and not pending[0].live:
            pending.popleft()
        if not pending:
            return None
        first = pending[0]
        batch: list[_Item] = []
        samples, consumed, blocked = 0, 0, False
        for item in pending:
            if item.live:
                if item.key != first.key or samples + item.samples > self.policy.max_batch_size:
                    blocked = True  # keep FIFO order: it opens the next batch
                    break
                batch.append(item)
                samples += item.samples
                if samples >= self.policy.max_batch_size:
                    consumed += 1
                    break
            consumed += 1
        loop = self._loop
        assert loop is not None
        deadline = first.enqueued + self.policy.max_queue_delay_s
        if not blocked and samples < self.policy.max_batch_size and loop.time() < deadline:
            if self._delay_timer is None:
                self._delay_timer = loop.call_at(deadline, self._delay_over)
            return None
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        for _ in range(consumed):
            pending.popleft()
        for item in batch:
            self._leave_queue(item)
        names = [n for n in self._output_order if any(n in item.outputs for item in batch)]
        self._running = batch
        job = _Job(
            loop,
            batch,
            [item.inputs for item in batch],
            names,
            time.perf_counter(),
            next(self._batches),
        )
        if samples <= self.inline_samples:
            return job
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve_jobs, name=f"ort-{self._name}", daemon=True
            )
            self._thread.start()
        self._jobs.put(job)
        return None

    def _delay_over(self) -> None:
        self._delay_timer = None
        self._dispatch()

    def _finish(self, job: _Job, outcomes: list[_Outcome], compute: float) -> None:
        """Back on the loop: hand each request its share, then start the next batch."""
        if self._running is job.items:
            self._running = []
        samples = sum(item.samples for item in job.items)
        if self._on_batch is not None and not all(isinstance(o, BaseException) for o in outcomes):
            self._on_batch(samples, compute)
        for item, outcome in zip(job.items, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(
                    BatchResult(
                        [outcome[n] for n in item.outputs],
                        job.started - item.arrived,
                        compute,
                        samples,
                        job.number,
                    )
                )
        self._dispatch()

    # -- on the version's thread (or inline, on the loop) -------------------------------------

    def _serve_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            outcomes, compute = self._run_job(job)
            # RuntimeError: the loop closed while the batch ran, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(self._finish, job, outcomes, compute)

    def _run_job(self, job: _Job) -> tuple[list[_Outcome], float]:
        try:
            return self._execute(job)
        except BaseException as exc:  # a bug here must not strand the waiters
            log.exception("%s: batch failed unexpectedly", self._name)
            return [exc] * len(job.items), 0.0

    def _execute(self, job: _Job) -> tuple[list[_Outcome], float]:
        inputs = job.inputs[0] if len(job.inputs) == 1 else _concatenate(job.inputs)
        start = time.perf_counter()
        try:
            outputs = self._run_checked(inputs, job.names)
        except Exception as exc:
            if len(job.inputs) == 1:
                return [self._failure(exc, inputs)], time.perf_counter() - start
            log.warning(
                "%s: a batch of %d requests failed (%s); retrying them one by one",
                self._name,
                len(job.inputs),
                exc,
            )
            outcomes: list[_Outcome] = []
            for alone in job.inputs:
                try:
                    outcomes.append(
                        dict(zip(job.names, self._run_checked(alone, job.names), strict=True))
                    )
                except Exception as single:
                    outcomes.append(self._failure(single, alone))
            return outcomes, time.perf_counter() - start
        compute = time.perf_counter() - start
        shares: list[_Outcome] = []
        offset = 0
        for item in job.items:
            end = offset + item.samples
            shares.append({n: out[offset:end] for n, out in zip(job.names, outputs, strict=True)})
            offset = end
        return shares, compute

    def _run_checked(self, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """The model's outputs, which must keep the batch's row count."""
        samples = next(iter(inputs.values())).shape[0]
        outputs = self._run(inputs, names)
        for name, array in zip(names, outputs, strict=True):
            if array.ndim == 0 or array.shape[0] != samples:
                raise InferenceFailed(
                    f"{self._name}: output {name!r} has shape {list(array.shape)} for a batch "
                    f"of {samples}; the model does not keep the batch axis"
                )
        return outputs

    def _failure(self, exc: Exception, inputs: dict[str, np.ndarray]) -> ServeError:
        if isinstance(exc, ServeError):
            return exc
        if self._input_sensitive:
            shapes = ", ".join(f"{name} {list(a.shape)}" for name, a in inputs.items())
            reason = " ".join(str(exc).split())[:300]
            return BadRequest(
                f"inputs: {self._name} cannot run on these inputs ({shapes}): {reason}"
            )
        log.error("%s: inference failed: %s", self._name, exc)
        return InferenceFailed(f"{self._name}: inference failed: {exc}")

    # -- lifecycle ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False when ``timeout_s`` ran out first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queued or self._running:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Stop the thread; anything queued or running is answered 503."""
        self._closed = True
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        gone = Unavailable(f"{self._name} was unloaded", retry_after_s=self._retry_after_s)
        for item in [*self._running, *self._pending]:
            self._leave_queue(item)
            if not item.future.done():
                item.future.set_exception(gone)
        self._running = []
        self._pending.clear()
        self._jobs.put(None)


def _concatenate(inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([one[name] for one in inputs]) for name in inputs[0]}
