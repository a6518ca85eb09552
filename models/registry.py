"""Architecture registry: a name (or ``package.module:factory``) → a model factory."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from normserve.errors import UserError, first_line

__all__ = [
    "TASKS",
    "Architecture",
    "ArchitectureError",
    "build_model",
    "get_architecture",
    "list_architectures",
    "register",
    "resolve_factory",
]

Factory = Callable[..., nn.Module]


TASKS = ("classification", "reconstruction")


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its factory, and what ``normserve train`` trains it on.

    ``task`` is ``"classification"`` (cross-entropy on the dataset's labels) or
    ``"reconstruction"`` (the model reproduces its input; mean squared error).
    """

    name: str
    factory: Factory
    dataset: str
    task: str = "classification"
    epochs: int = 12


_REGISTRY: dict[str, Architecture] = {}


class ArchitectureError(UserError):
    """The architecture name cannot be resolved or the factory rejected its config."""


def register(
    name: str, *, dataset: str, task: str = "classification", epochs: int = 12
) -> Callable[[Factory], Factory]:
    """Register ``factory`` under ``name``; it takes keyword arguments (the ``arch_config``).

    ``epochs`` is the default ``normserve train`` uses for it.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = Architecture(
            name=name, factory=factory, dataset=dataset, task=task, epochs=epochs
        )
        return factory

    return decorator


_BUILTIN_MODULES = (
    "normserve.models.digits_cnn",
    "normserve.models.resnet_cifar",
    "normserve.models.mixnorm",
    "normserve.models.seq_tcn",
    "normserve.models.conv_decoder",
)


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_architectures() -> list[str]:
    """Names of the registered architectures, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def resolve_factory(arch: str) -> Factory:
    """A registry name, or ``package.module:factory`` for a user's own architecture."""
    _load_builtin()
    if ":" in arch:
        module_name, _, attr = arch.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or whatever the user's module raises on import
            raise ArchitectureError(
                f"arch {arch!r}: cannot import {module_name!r}: {first_line(exc)}"
            ) from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ArchitectureError(f"arch {arch!r}: {module_name} has no callable {attr!r}")
        return factory
    return get_architecture(arch).factory


def get_architecture(name: str) -> Architecture:
    """The registry entry for ``name``."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ArchitectureError(
            f"arch {name!r} is not registered; expected one of: {known}, or package.module:factory"
        ) from None


def build_model(arch: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Build an architecture with its keyword config."""
    factory = resolve_factory(arch)
    try:
        model = factory(**(config or {}))
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(f"arch {arch!r} rejected arch_config {config!r}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"arch {arch!r} returned {type(model).__name__}, not nn.Module")
    return model
