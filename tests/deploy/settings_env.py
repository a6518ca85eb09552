"""Compare NORMSERVE_* variables with the real settings class (names, values, defaults)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr

__all__ = ["PREFIX", "env_name", "field_of", "plain", "settings_from_env"]

PREFIX = "NORMSERVE_"


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def field_of(name: str) -> str:
    assert name.startswith(PREFIX), name
    return name.removeprefix(PREFIX).lower()


def plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@contextmanager
def _only_these(env: Mapping[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            del os.environ[key]
        os.environ.update(saved)


def settings_from_env(env: Mapping[str, str]) -> Any:
    """Settings as the server builds them inside the container from exactly ``env``: the same
    environment source, the same validation."""
    from normserve.service.settings import Settings

    with _only_these(env):
        return Settings()
