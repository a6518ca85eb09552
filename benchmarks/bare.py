"""The physical limit: the ONNX Runtime session the server would create, run bare in-process.

The session is made by the service's own loader (``service.model.load_model``) from the same
repository entry and the same settings as the server under test, so "bare" differs from
"served" only by what serving adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_served_model"]


def load_served_model(entry: Path, settings: dict[str, Any] | None = None) -> Any:
    """``service.model.LoadedModel`` for ``<repository>/<name>/<version>`` (``entry``)."""
    from normserve.model_repository import scan_repository
    from normserve.service.runtime.loader import load_model
    from normserve.service.runtime.providers import select_providers
    from normserve.service.settings import Settings

    root = entry.parent.parent
    config = Settings(repository=root, **(settings or {}))
    matches = [e for e in scan_repository(root) if e.path.resolve() == entry.resolve()]
    if not matches:
        raise FileNotFoundError(f"{entry} is not a version directory of {root}")
    return load_model(matches[0], config, select_providers(config.provider))
