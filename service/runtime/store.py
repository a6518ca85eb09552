"""The set of served models: an immutable snapshot, replaced whole (never mutated in place)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from normserve.model_repository import parse_version
from normserve.service.errors import BadRequest, NotFound
from normserve.service.runtime.servable import Servable

__all__ = ["ModelStore", "url_version"]


def url_version(raw: str) -> int:
    """A version from a URL, by the repository's version rule; 400 otherwise."""
    version = parse_version(raw)
    if version is None:
        raise BadRequest(f"version must be a positive integer, got {raw[:64]!r}")
    return version


def _freeze(table: Mapping[str, Mapping[int, Servable]]) -> Mapping[str, Mapping[int, Servable]]:
    return MappingProxyType(
        {
            name: MappingProxyType(dict(sorted(versions.items())))
            for name, versions in sorted(table.items())
            if versions
        }
    )


@dataclass(frozen=True)
class ModelStore:
    """``name → version → Servable``; lookups never see a half-updated set."""

    models: Mapping[str, Mapping[int, Servable]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @classmethod
    def of(cls, servables: list[Servable]) -> ModelStore:
        table: dict[str, dict[int, Servable]] = {}
        for servable in servables:
            table.setdefault(servable.name, {})[servable.version] = servable
        return cls(models=_freeze(table))

    def with_model(self, name: str, versions: list[Servable]) -> ModelStore:
        """A new snapshot where ``name`` serves exactly ``versions`` (none: removed)."""
        table = {n: dict(v) for n, v in self.models.items() if n != name}
        if versions:
            table[name] = {s.version: s for s in versions}
        return ModelStore(models=_freeze(table))

    def versions(self, name: str) -> list[int]:
        if name not in self.models:
            raise NotFound(f"model {name[:128]!r} is not in the repository")
        return list(self.models[name])

    def get(self, name: str, version: str | None = None) -> Servable:
        """The named version, or the newest when ``version`` is None."""
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"model {name[:128]!r} is not in the repository")
        if version is None:
            return versions[next(reversed(versions))]
        number = url_version(version)
        try:
            return versions[number]
        except KeyError:
            raise NotFound(
                f"model {name!r} has no version {number}; available: {list(versions)}"
            ) from None

    def __iter__(self) -> Iterator[Servable]:
        for versions in self.models.values():
            yield from versions.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self.models.values())
