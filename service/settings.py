"""Every serving setting, from ``NORMSERVE_*`` environment variables, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Provider", "Settings"]

Provider = Literal["auto", "cpu", "cuda"]


class Settings(BaseSettings):
    """Serving configuration. Each field is read from ``NORMSERVE_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="NORMSERVE_", extra="forbid", use_attribute_docstrings=True, frozen=True
    )

    repository: Path = Path("model_repository")
    """Model repository directory: ``<name>/<version>/{model.onnx, model.json}``."""

    host: str = "127.0.0.1"
    """Interface to listen on; use 0.0.0.0 inside a container."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    provider: Provider = "auto"
    """ONNX Runtime provider: ``auto`` (CUDA when onnxruntime-gpu offers it, else CPU), ``cpu``,
    or ``cuda`` (start-up fails when CUDA is unavailable)."""

    intra_op_threads: int = Field(default=0, ge=0)
    """Threads ONNX Runtime uses inside one operator; 0 lets it choose (one per physical core)."""

    inter_op_threads: int = Field(default=1, ge=1)
    """Threads ONNX Runtime uses across independent operators (sequential execution when 1)."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger bodies get 413 before they are read."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level of the server and its access log."""
