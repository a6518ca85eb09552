"""Loading a version: the session options the settings ask for reach ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from normserve.model_repository import scan_repository
from normserve.service.runtime.loader import load_model
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
