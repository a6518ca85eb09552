"""Loading a version: the session options the settings ask for reach ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from normserve.model_repository import scan_repository
from normserve.service.runtime.loader import LoadedModel, load_model
from normserve.service.settings import Settings


@pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1")])
def test_intra_op_spinning_reaches_the_session(digits_repository: Path, spinning: bool, entry: str):
    (version,) = scan_repository(digits_repository)
    settings = Settings(provider="cpu", intra_op_spinning=spinning)
    model = load_model(version, settings, ["CPUExecutionProvider"])
    options = model.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == entry


def test_spinning_is_off_by_default():
    # Spinning threads doubled the server's CPU per request under load (docs/benchmarks.md).
    assert Settings().intra_op_spinning is False


def _intra_op_threads(digits_repository: Path, **settings: object) -> tuple[int, int]:
    """What the loaded version records and what its session was really given."""
    (version,) = scan_repository(digits_repository)
    model = load_model(version, Settings(provider="cpu", **settings), ["CPUExecutionProvider"])
    return model.intra_op_threads, model.session.get_session_options().intra_op_num_threads


def test_auto_gives_a_model_within_the_inline_bound_one_intra_op_thread(digits_repository: Path):
    # 100 ms: the tiny digits model is within it on any machine.
    assert _intra_op_threads(digits_repository, inline_batch_ms=100.0) == (1, 1)


def test_auto_leaves_a_model_over_the_inline_bound_to_onnx_runtime(digits_repository: Path):
    # A bound of 0 times nothing: no version is within it, so the pool stays as ORT sizes it.
    assert _intra_op_threads(digits_repository, inline_batch_ms=0.0) == (0, 0)


@pytest.mark.parametrize("threads", [0, 3])
def test_a_thread_count_that_is_set_is_kept(digits_repository: Path, threads: int):
    assert _intra_op_threads(
        digits_repository, inline_batch_ms=100.0, intra_op_threads=threads
    ) == (threads, threads)


@pytest.mark.parametrize("value", ["auto", "AUTO", ""])
def test_intra_op_threads_auto_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str):
    monkeypatch.setenv("NORMSERVE_INTRA_OP_THREADS", value)
    assert Settings().intra_op_threads is None
    monkeypatch.setenv("NORMSERVE_INTRA_OP_THREADS", "2")
    assert Settings().intra_op_threads == 2


@pytest.mark.parametrize(
    ("pooled_ms", "single_ms", "expected"),
    [
        (0.05, 0.04, 1),  # within the bound with the pool: one thread
        (0.3, 0.05, 1),  # over the bound with the pool, but near it: tried, and within alone
        (0.3, 0.3, 0),  # near, but over the bound alone too: the pool is kept
        (None, 0.05, 0),  # clearly over (None): not even tried
    ],
)
def test_auto_tries_one_thread_for_a_model_within_or_near_the_bound(
    digits_repository: Path,
    monkeypatch: pytest.MonkeyPatch,
    pooled_ms: float | None,
    single_ms: float,
    expected: int,
):
    # The timings stand in for a machine where the pool's wake-ups decide (bound 0.1 ms).
    tried: list[int] = []

    def timed(self: LoadedModel, bound_ms: float, runs: int = 7) -> float | None:
        tried.append(self.intra_op_threads)
        return single_ms if self.intra_op_threads == 1 else pooled_ms

    monkeypatch.setattr(LoadedModel, "time_one_sample", timed)
    threads, given = _intra_op_threads(digits_repository, inline_batch_ms=0.1)
    assert (threads, given) == (expected, expected)
    assert tried == ([0] if pooled_ms is None else [0, 1])
