"""Checkpoint or model object → folded, frozen, proven ONNX model in a model repository.

``normserve.export.export_model(model, example_inputs, repository=..., name=...)`` is the
Python API (export/entry.py); ``normserve export`` the command line (export/from_checkpoint.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_model"]


def __getattr__(name: str) -> Any:
    # Lazy: importing normserve.export.errors must not pull in torch and ONNX Runtime.
    if name == "export_model":
        from normserve.export.entry import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
