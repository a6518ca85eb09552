"""The set of served models: an immutable snapshot, replaced whole (never mutated in place)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from service.errors import BadRequest, NotFound
from service.model import LoadedModel

__all__ = ["ModelStore", "parse_version"]


def parse_version(raw: str) -> int:
    """A version from a URL: a positive integer written in decimal digits."""
    if not raw.isdigit() or int(raw) < 1 or len(raw) > 18:
        raise BadRequest(f"version must be a positive integer, got {raw[:64]!r}")
    return int(raw)


@dataclass(frozen=True)
class ModelStore:
    """``name → version → LoadedModel``; lookups never see a half-updated set."""

    models: Mapping[str, Mapping[int, LoadedModel]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @classmethod
    def of(cls, loaded: list[LoadedModel]) -> ModelStore:
        table: dict[str, dict[int, LoadedModel]] = {}
        for model in loaded:
            table.setdefault(model.name, {})[model.version] = model
        frozen = {name: MappingProxyType(dict(sorted(v.items()))) for name, v in table.items()}
        return cls(models=MappingProxyType(dict(sorted(frozen.items()))))

    def versions(self, name: str) -> list[int]:
        if name not in self.models:
            raise NotFound(f"model {name[:128]!r} is not in the repository")
        return list(self.models[name])

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The named version, or the newest when ``version`` is None."""
        versions = self.versions(name)
        if version is None:
            return self.models[name][versions[-1]]
        number = parse_version(version)
        try:
            return self.models[name][number]
        except KeyError:
            raise NotFound(
                f"model {name!r} has no version {number}; available: {versions}"
            ) from None

    def __len__(self) -> int:
        return sum(len(v) for v in self.models.values())
