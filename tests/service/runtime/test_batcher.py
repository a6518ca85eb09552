"""The dynamic batcher on its own: batching, splitting, overload, timeouts, failure isolation."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from normserve.model_repository import scan_repository
from normserve.service.errors import InferenceFailed, QueueFull, QueueTimeout, Unavailable
from normserve.service.runtime.batcher import Batcher, BatchPolicy
from normserve.service.runtime.loader import load_model
from normserve.service.runtime.servable import inline_batch_samples, make_servable
from normserve.service.settings import Settings
from normserve.service.telemetry.metrics import Metrics

# The export's parity gate: the same graph at another batch size may take another kernel path.
RTOL, ATOL = 1e-5, 1e-6


def policy(**overrides: float) -> BatchPolicy:
    values = {
        "max_batch_size": 8,
        "max_queue_delay_s": 0.05,
        "max_queue_size": 64,
        "queue_timeout_s": 5.0,
    }
    values.update(overrides)
    return BatchPolicy(**values)  # type: ignore[arg-type]


class Recorder:
    """A run function: doubles ``x`` into ``y`` and sums rows into ``s``; records each batch."""

    def __init__(self, delay_s: float = 0.0, poison: float | None = None) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.delay_s = delay_s
        self.poison = poison

    def __call__(self, inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.shape[0])
        self.threads.add(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.poison is not None and np.any(x == self.poison):
            raise RuntimeError("poisoned input")
        out = {"y": x * 2.0, "s": x.sum(axis=1, keepdims=True)}
        return [out[n] for n in names]


def make(run, **overrides: float) -> Batcher:
    return Batcher(run, policy(**overrides), ["y", "s"], name="test/1")


def test_concurrent_requests_share_a_batch_and_get_their_own_rows_back():
    run = Recorder()
    batcher = make(run)
    rng = np.random.default_rng(0)
    requests = [rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 2, 1, 3)]

    async def main():
        return await asyncio.gather(
            *(batcher.submit({"x": x}, x.shape[0], ["s", "y"]) for x in requests)
        )

    results = asyncio.run(main())
    assert run.batches == [7]  # one batch: 1 + 2 + 1 + 3 samples, within the 50 ms delay
    for x, result in zip(requests, results, strict=True):
        s, y = result.outputs  # in the order this request asked for
        np.testing.assert_array_equal(y, x * 2.0)
        np.testing.assert_array_equal(s, x.sum(axis=1, keepdims=True))
        assert result.batch_size == 7
    assert threading.get_ident() not in run.threads  # inference ran off the event loop thread


def test_max_batch_size_splits_batches_in_arrival_order():
    run = Recorder()
    batcher = make(run, max_batch_size=4)

    async def main():
        xs = [np.full((n, 3), i, dtype=np.float32) for i, n in enumerate((3, 2, 2, 1))]
        return await asyncio.gather(*(batcher.submit({"x": x}, len(x), ["y"]) for x in xs))

    results = asyncio.run(main())
    assert run.batches == [3, 4, 1]  # the 2 does not fit beside the 3; 2 + 2 fill a batch
    assert [r.outputs[0][0, 0] for r in results] == [0.0, 2.0, 4.0, 6.0]


def test_requests_with_different_sample_shapes_never_share_a_batch():
    seen: list[tuple[int, ...]] = []

    def run(inputs, names):
        seen.append(inputs["x"].shape)
        return [inputs["x"] * 2.0 for _ in names]

    batcher = Batcher(run, policy(), ["y"], name="dyn/1")

    async def main():
        a, b = np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)
        return await asyncio.gather(
            batcher.submit({"x": a}, 1, ["y"]),
            batcher.submit({"x": b}, 1, ["y"]),
            batcher.submit({"x": a}, 1, ["y"]),
        )

    results = asyncio.run(main())
    assert [r.outputs[0].shape for r in results] == [(1, 3), (1, 5), (1, 3)]
    assert (1, 5) in seen
    assert all(shape[1] in (3, 5) for shape in seen)


def test_zero_delay_runs_a_lone_request_at_once():
    run = Recorder()
    batcher = make(run, max_queue_delay_s=0.0)

    async def main():
        start = time.perf_counter()
        result = await batcher.submit({"x": np.ones((1, 3), np.float32)}, 1, ["y"])
        return result, time.perf_counter() - start

    result, elapsed = asyncio.run(main())
    assert result.queue_s < 0.05
    assert elapsed < 1.0  # not waiting for company that never comes (the delay is 0)


def test_a_poisoned_request_fails_alone_and_its_batch_neighbours_succeed():
    run = Recorder(poison=-7.0)
    batcher = make(run)

    async def main():
        good_a = np.ones((1, 3), np.float32)
        bad = np.full((1, 3), -7.0, np.float32)
        good_b = np.full((2, 3), 3.0, np.float32)
        return await asyncio.gather(
            batcher.submit({"x": good_a}, 1, ["y"]),
            batcher.submit({"x": bad}, 1, ["y"]),
            batcher.submit({"x": good_b}, 2, ["y"]),
            return_exceptions=True,
        )

    ok_a, failed, ok_b = asyncio.run(main())
    assert isinstance(failed, InferenceFailed)
    assert "poisoned input" in failed.message
    np.testing.assert_array_equal(ok_a.outputs[0], np.full((1, 3), 2.0))
    np.testing.assert_array_equal(ok_b.outputs[0], np.full((2, 3), 6.0))
    assert run.batches[0] == 4  # they were batched together first, then retried one by one


def test_every_waiter_of_a_failed_batch_gets_the_failure():
    def broken(inputs, names):
        raise RuntimeError("session crashed")

    batcher = Batcher(broken, policy(), ["y"], name="broken/1")

    async def main():
        x = np.ones((1, 3), np.float32)
        return await asyncio.gather(
            *(batcher.submit({"x": x}, 1, ["y"]) for _ in range(3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert all("session crashed" in r.message for r in results)


def test_a_model_that_drops_the_batch_axis_is_an_inference_failure():
    batcher = Batcher(lambda inputs, names: [np.zeros((1, 2))], policy(), ["y"], name="m/1")

    async def main():
        return await batcher.submit({"x": np.ones((3, 3), np.float32)}, 3, ["y"])

    with pytest.raises(InferenceFailed, match="does not keep the batch axis"):
        asyncio.run(main())


def test_full_queue_is_refused_at_once_with_retry_after():
    run = Recorder(delay_s=0.3)
    batcher = make(run, max_queue_size=2, max_queue_delay_s=0.0)

    async def main():
        x = np.ones((1, 3), np.float32)
        first = asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"]))
        await asyncio.sleep(0.05)  # running now: the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"])) for _ in range(2)]
        await asyncio.sleep(0)
        assert batcher.queued == 2
        with pytest.raises(QueueFull) as refused:
            await batcher.submit({"x": x}, 1, ["y"])
        await asyncio.gather(first, *queued)
        return refused.value

    refused = asyncio.run(main())
    assert refused.status == 503
    assert refused.headers == {"Retry-After": "1"}


def test_a_request_that_waits_too_long_in_the_queue_times_out_and_others_go_on():
    run = Recorder(delay_s=0.4)
    batcher = make(run, max_queue_delay_s=0.0, queue_timeout_s=0.1, max_batch_size=1)

    async def main():
        x = np.ones((1, 3), np.float32)
        first = asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"]))
        await asyncio.sleep(0.02)
        start = time.perf_counter()
        with pytest.raises(QueueTimeout, match="waited 100 ms in the queue"):
            await batcher.submit({"x": x}, 1, ["y"])
        waited = time.perf_counter() - start
        done = await first  # the running one was not cut short by the timer
        later = await batcher.submit({"x": x}, 1, ["y"], timeout_s=5.0)
        return waited, done, later

    waited, done, later = asyncio.run(main())
    assert 0.08 < waited < 0.35  # answered at its timeout, not when the worker got to it
    assert done.outputs[0].shape == (1, 3)
    assert later.outputs[0].shape == (1, 3)
    assert run.batches == [1, 1]  # the timed-out request never ran


def test_close_answers_queued_requests_503_and_drain_waits_for_work():
    run = Recorder(delay_s=0.2)
    batcher = make(run, max_queue_delay_s=0.0, max_batch_size=1)

    async def main():
        x = np.ones((1, 3), np.float32)
        first = asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"]))
        await asyncio.sleep(0.02)
        assert not await batcher.drain(0.05)  # still running
        assert await batcher.drain(2.0)
        await first
        second = asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"]))
        third = asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"]))
        await asyncio.sleep(0.02)
        await batcher.close()
        results = await asyncio.gather(second, third, return_exceptions=True)
        with pytest.raises(Unavailable):
            await batcher.submit({"x": x}, 1, ["y"])
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, Unavailable) and r.status == 503 for r in results)


def test_inline_batches_what_arrived_in_one_loop_turn_on_the_loop_thread():
    run = Recorder()
    batcher = Batcher(
        run, policy(max_queue_delay_s=0.0), ["y", "s"], name="tiny/1", inline_samples=8
    )
    rng = np.random.default_rng(1)
    requests = [rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 2, 1, 3)]

    async def main():
        return await asyncio.gather(
            *(batcher.submit({"x": x}, x.shape[0], ["y", "s"]) for x in requests)
        )

    results = asyncio.run(main())
    # No delay, yet one batch: the four submits ran in one loop turn, and the inline batch is
    # formed one turn after the first arrived.
    assert run.batches == [7]
    assert run.threads == {threading.get_ident()}  # on the loop, no thread hand-off
    assert batcher._thread is None
    for x, result in zip(requests, results, strict=True):
        y, s = result.outputs
        np.testing.assert_array_equal(y, x * 2.0)
        np.testing.assert_array_equal(s, x.sum(axis=1, keepdims=True))


def test_inline_lets_the_loop_serve_others_between_batches():
    events: list[str] = []

    def run(inputs, names):
        events.append("batch")
        return [inputs["x"] * 2.0 for _ in names]

    batcher = Batcher(run, policy(max_batch_size=1), ["y"], name="tiny/1", inline_samples=8)

    async def ticker(stop: asyncio.Event) -> None:
        for _ in range(1000):  # bounded
            if stop.is_set():
                return
            events.append("tick")
            await asyncio.sleep(0)

    async def main():
        stop = asyncio.Event()
        ticks = asyncio.ensure_future(ticker(stop))
        x = np.ones((1, 3), np.float32)
        results = await asyncio.gather(*(batcher.submit({"x": x}, 1, ["y"]) for _ in range(4)))
        stop.set()
        await ticks
        return results

    results = asyncio.run(main())
    assert len(results) == 4
    assert events.count("batch") == 4
    batches = [i for i, event in enumerate(events) if event == "batch"]
    # one batch per loop turn: never two batches without the ticker running in between
    assert all(b - a > 1 for a, b in itertools.pairwise(batches))


def test_inline_keeps_failures_to_the_request_that_caused_them():
    run = Recorder(poison=-7.0)
    batcher = Batcher(run, policy(), ["y"], name="tiny/1", inline_samples=8)

    async def main():
        good = np.ones((2, 3), np.float32)
        bad = np.full((1, 3), -7.0, np.float32)
        return await asyncio.gather(
            batcher.submit({"x": good}, 2, ["y"]),
            batcher.submit({"x": bad}, 1, ["y"]),
            return_exceptions=True,
        )

    ok, failed = asyncio.run(main())
    np.testing.assert_array_equal(ok.outputs[0], np.full((2, 3), 2.0))
    assert isinstance(failed, InferenceFailed)
    assert "poisoned input" in failed.message
    assert run.batches == [3, 2, 1]  # together first, then one request at a time


def test_inline_close_answers_queued_requests_503():
    run = Recorder()
    batcher = Batcher(run, policy(max_queue_delay_s=1.0), ["y"], name="tiny/1", inline_samples=8)

    async def main():
        x = np.ones((1, 3), np.float32)
        waiting = asyncio.ensure_future(batcher.submit({"x": x}, 1, ["y"]))
        await asyncio.sleep(0.02)  # queued, waiting out its delay for company
        await batcher.close()
        return await asyncio.gather(waiting, return_exceptions=True)

    (result,) = asyncio.run(main())
    assert isinstance(result, Unavailable)
    assert run.batches == []


def test_batches_above_the_inline_size_go_to_the_thread_and_small_ones_stay():
    run = Recorder()
    batcher = Batcher(run, policy(max_queue_delay_s=0.0), ["y"], name="tiny/1", inline_samples=3)
    loop_thread: list[int] = []

    async def main():
        loop_thread.append(threading.get_ident())
        big = [np.full((2, 3), i, np.float32) for i in range(3)]  # 6 samples: the thread
        first = await asyncio.gather(*(batcher.submit({"x": x}, 2, ["y"]) for x in big))
        small = await batcher.submit({"x": np.ones((1, 3), np.float32)}, 1, ["y"])  # inline
        return first, small

    first, small = asyncio.run(main())
    assert run.batches == [6, 1]
    assert len(run.threads) == 2  # the version's thread, then the loop's
    assert loop_thread[0] in run.threads
    assert [r.outputs[0][0, 0] for r in first] == [0.0, 2.0, 4.0]
    np.testing.assert_array_equal(small.outputs[0], np.full((1, 3), 2.0))


def test_the_inline_size_follows_the_timings_taken_at_load(digits_repository: Path):
    (entry,) = scan_repository(digits_repository)
    providers = ["CPUExecutionProvider"]
    timed = load_model(entry, Settings(provider="cpu", inline_batch_ms=100.0), providers)
    assert timed.batch_ms is not None
    one, full = timed.batch_ms
    assert 0.0 < one <= full < 100.0
    never = load_model(entry, Settings(provider="cpu", inline_batch_ms=0.0), providers)
    assert never.batch_ms is None
    most = timed.config.max_batch_size
    assert inline_batch_samples(timed, 100.0) == most  # every batch is within a generous bound
    assert inline_batch_samples(timed, one / 2) == 0  # not even one sample is
    assert inline_batch_samples(never, 100.0) == 0  # not timed: always the thread
    # In between: the straight line through the two timings, checked against a stand-in.
    line = replace(timed, batch_ms=(0.05, 0.05 + 0.01 * (most - 1)))
    assert inline_batch_samples(line, 0.1) == 6  # 0.05 ms + 5 x 0.01 ms
    metrics = Metrics(lambda: [])
    served = make_servable(line, entry, "a", Settings(inline_batch_ms=0.1), metrics)
    assert served.batcher.inline_samples == 6
    off = make_servable(line, entry, "a", Settings(inline_batch_ms=0.0), metrics)
    assert off.batcher.inline_samples == 0


class _Timed:
    """A session whose runs take the given seconds in turn (the last one from then on)."""

    def __init__(self, *seconds: float) -> None:
        self.seconds = list(seconds)
        self.calls = 0

    def run(self, outputs, feed):
        time.sleep(self.seconds[min(self.calls, len(self.seconds) - 1)])
        self.calls += 1
        return [np.zeros((len(next(iter(feed.values()))), 10), np.float32)]


def test_a_model_clearly_over_the_inline_bound_is_timed_by_two_runs_only(
    digits_repository: Path,
):
    (entry,) = scan_repository(digits_repository)
    model = load_model(
        entry, Settings(provider="cpu", inline_batch_ms=0.0), ["CPUExecutionProvider"]
    )
    slow = _Timed(0.02)  # every run takes 20 ms
    assert replace(model, session=slow).time_one_sample(bound_ms=0.1) is None
    assert slow.calls == 2  # not eight runs of a model that cannot run inline


def test_one_slow_run_does_not_decide_the_inline_timing(digits_repository: Path):
    # A first run that pays for buffers (or meets a busy core) once: the model is timed by
    # its usual runs. Judged by that one run, it flapped between inline and the thread.
    (entry,) = scan_repository(digits_repository)
    model = load_model(
        entry, Settings(provider="cpu", inline_batch_ms=0.0), ["CPUExecutionProvider"]
    )
    timed = replace(model, session=_Timed(0.05, 0.0)).time_one_sample(bound_ms=5.0)
    assert timed is not None
    assert timed < 5.0
    # Slow now and then (one run in four): the median still stands for the model.
    wobbly = _Timed(0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.05, 0.0)
    timed = replace(model, session=wobbly).time_one_sample(bound_ms=5.0)
    assert timed is not None
    assert timed < 5.0


def test_batched_results_equal_unbatched_results_on_a_real_export(digits_repository: Path):
    (entry,) = scan_repository(digits_repository)
    model = load_model(
        entry, Settings(provider="cpu", intra_op_threads=1), ["CPUExecutionProvider"]
    )
    sizes: list[int] = []
    batcher = Batcher(
        model.run,
        policy(max_batch_size=64, max_queue_delay_s=0.1),
        ["logits"],
        name="digits/1",
        on_batch=lambda samples, _compute: sizes.append(samples),
    )
    rng = np.random.default_rng(3)
    requests = [
        (rng.uniform(0, 16, size=(n, 1, 8, 8))).astype(np.float32) for n in (1, 3, 2, 1, 5, 1)
    ]

    async def main():
        return await asyncio.gather(
            *(batcher.submit({"input": x}, len(x), ["logits"]) for x in requests)
        )

    results = asyncio.run(main())
    assert sizes == [13]  # all six requests ran as one batch
    for x, result in zip(requests, results, strict=True):
        (alone,) = model.run({"input": x}, ["logits"])
        np.testing.assert_allclose(result.outputs[0], alone, rtol=RTOL, atol=ATOL)
