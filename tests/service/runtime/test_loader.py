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
