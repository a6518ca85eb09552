"""The two-builds comparison runs both servers, checks their answers agree and reports ratios.
No timing is asserted: only that the harness measures, checks and cleans up."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.compare_builds import compare
from benchmarks.server_process import normserve_command
from tests.service.fake_models import affine_model, write_entry

pytestmark = pytest.mark.slow


def test_a_build_compared_with_itself(tmp_path: Path):
    write_entry(tmp_path, "affine", 1)
    script = normserve_command()
    result = compare(script, script, tmp_path, "affine", rounds=2, calls=5)
    assert set(result["results"]) == {"json", "binary"}
    for figures in result["results"].values():
        assert len(figures["rounds_baseline_ms"]) == len(figures["rounds_candidate_ms"]) == 2
        assert figures["baseline_ms"] > 0
        assert figures["candidate_ms"] > 0
        assert figures["ratio"] == pytest.approx(figures["candidate_ms"] / figures["baseline_ms"])


def test_a_build_that_answers_differently_is_refused(tmp_path: Path):
    # The candidate serves the weights of the fake model's version 2: other outputs.
    one, two = tmp_path / "one", tmp_path / "two"
    write_entry(one, "affine", 1)
    write_entry(two, "affine", 1, onnx_bytes=affine_model(2))
    script = normserve_command()
    with pytest.raises(AssertionError):
        compare(script, script, one, "affine", rounds=1, calls=2, candidate_repository=two)
