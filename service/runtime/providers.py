"""Choosing ONNX Runtime execution providers from the ``provider`` setting."""

from __future__ import annotations

import onnxruntime as ort

from normserve.errors import UserError
from normserve.service.settings import Provider

__all__ = ["ProviderError", "select_providers"]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderError(UserError):
    """The requested provider is not available in the installed ONNX Runtime."""


def select_providers(provider: Provider, available: list[str] | None = None) -> list[str]:
    """Providers in priority order; CPU is always last as the fallback for unsupported ops."""
    available = ort.get_available_providers() if available is None else available
    if provider == "cpu":
        return [CPU]
    if provider == "cuda":
        if CUDA not in available:
            raise ProviderError(
                f"provider 'cuda' requested but ONNX Runtime {ort.__version__} offers only "
                f"{available}: install onnxruntime-gpu on a machine with CUDA"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]
