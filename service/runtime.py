"""The live serving state: settings, the current model store, readiness."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.errors import Unavailable
from service.model import load_model
from service.providers import select_providers
from service.repository import scan_repository
from service.settings import Settings
from service.store import ModelStore

__all__ = ["Runtime"]

log = logging.getLogger("normserve.service")


@dataclass
class Runtime:
    """Held on ``app.state.runtime``; routes reach it through a dependency."""

    settings: Settings
    store: ModelStore = field(default_factory=ModelStore)
    ready: bool = False

    def load_repository(self) -> None:
        """Load and warm every version in the repository, then publish them all at once.

        Any failing entry fails start-up with its reason (like Triton's exit-on-error):
        serving a partial repository silently would hide the failure.
        """
        providers = select_providers(self.settings.provider)
        entries = scan_repository(self.settings.repository)
        loaded = [load_model(entry, self.settings, providers) for entry in entries]
        if not loaded:
            log.warning("model repository %s holds no models", self.settings.repository)
        self.store = ModelStore.of(loaded)
        self.ready = True

    def require_ready(self) -> ModelStore:
        if not self.ready:
            raise Unavailable("server is not ready: models are still loading")
        return self.store
