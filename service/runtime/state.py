"""The live serving state: settings, the current model store, readiness, reload and drain.

The store is an immutable snapshot. Loading a version (read, session, warm-up, golden probe)
happens off the event loop beside the versions already serving; only a version that passed
every step is published, by replacing the whole snapshot in one assignment on the loop. A
replaced version keeps answering the requests already queued on it, then is closed.

Over 300 lines because loading, polling, swapping and draining share one lock and one store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normserve.model_repository import (
    RepositoryError,
    VersionEntry,
    is_model_name,
    scan_model,
    scan_repository,
)
from normserve.service.errors import BadRequest, NotFound, Unavailable
from normserve.service.runtime.loader import load_model
from normserve.service.runtime.providers import select_providers
from normserve.service.runtime.servable import Servable, make_servable
from normserve.service.runtime.store import ModelStore
from normserve.service.settings import Settings
from normserve.service.telemetry.metrics import LiveVersion, Metrics

__all__ = ["Runtime"]

log = logging.getLogger("normserve.service")


@dataclass(frozen=True)
class _Failure:
    fingerprint: tuple[int, ...]
    reason: str


class Runtime:
    """Held on ``app.state.runtime``; routes reach it through a dependency."""

    def _live_versions(self) -> Iterator[LiveVersion]:
        for servable in self.store:
            queued = servable.batcher.queued
            triton = servable.stats.triton_values(queued)
            yield LiveVersion(servable.name, servable.version, queued, triton)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore()
        self.metrics = Metrics(self._live_versions)
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.failures: dict[tuple[str, int], _Failure] = {}
        self.unloaded: set[str] = set()  # unloaded through the API: polling leaves them alone
        self._providers: list[str] | None = None
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._scan_errors: dict[str, str] = {}  # logged once per distinct error

    # -- start-up ---------------------------------------------------------------------------

    @property
    def providers(self) -> list[str]:
        if self._providers is None:
            self._providers = select_providers(self.settings.provider)
        return self._providers

    def _load(self, entry: VersionEntry, previous: Servable | None = None) -> Servable:
        fingerprint = entry.fingerprint()  # before reading: a change while reading shows later
        model = load_model(entry, self.settings, self.providers)
        stats = previous.stats if previous is not None else None
        return make_servable(model, entry, fingerprint, self.settings, self.metrics, stats)

    def load_repository(self) -> None:
        """Load, warm and probe every version in the repository, then publish them at once.

        Any failing entry fails start-up with its reason (like Triton's exit-on-error):
        serving a partial repository silently would hide the failure.
        """
        entries = scan_repository(self.settings.repository)
        if not entries:
            _refuse_empty(self.settings.repository, self.settings.allow_empty_repository)
        servables = []
        for entry in entries:
            try:
                servables.append(self._load(entry))
            except RepositoryError:
                self.metrics.model_event(entry.name, entry.version, "load", ok=False)
                raise
            self.metrics.model_event(entry.name, entry.version, "load", ok=True)
        if not servables:
            log.warning(
                "model repository %s holds no models: serving none until some are loaded",
                self.settings.repository,
            )
        self.store = ModelStore.of(servables)
        self.ready = True

    def require_ready(self) -> ModelStore:
        if self.draining:
            raise Unavailable("server is shutting down", retry_after_s=self.settings.retry_after_s)
        if not self.ready:
            raise Unavailable(
                "server is not ready: models are still loading",
                retry_after_s=self.settings.retry_after_s,
            )
        return self.store

    # -- reload -----------------------------------------------------------------------------

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def reload_model(self, name: str, *, retry_failed: bool) -> list[str]:
        """Bring ``name`` in line with its directory; the reasons of versions refused.

        Unchanged versions keep serving untouched; new or changed ones are loaded beside them
        and swapped in only when they pass; versions gone from disk are retired. A version that
        failed before is tried again only when its files changed or ``retry_failed``.
        """
        async with self._guard():
            return await self._reload_locked(name, retry_failed=retry_failed)

    async def _reload_locked(self, name: str, *, retry_failed: bool) -> list[str]:
        model_dir = self.settings.repository / name
        try:
            entries = await asyncio.to_thread(_scan_model, model_dir)
        except RepositoryError as exc:
            if self._scan_errors.get(name) != str(exc):
                log.error("cannot scan %s: %s", model_dir, exc)
            self._scan_errors[name] = str(exc)
            return [str(exc)]
        self._scan_errors.pop(name, None)
        current = dict(self.store.models.get(name, {}))
        serving: list[Servable] = []
        retired: list[Servable] = []
        reasons: list[str] = []
        for entry in entries:
            key = (entry.name, entry.version)
            old = current.pop(entry.version, None)
            fingerprint = await asyncio.to_thread(entry.fingerprint)
            if old is not None and old.fingerprint == fingerprint:
                serving.append(old)
                continue
            failure = self.failures.get(key)
            if failure is not None and failure.fingerprint == fingerprint and not retry_failed:
                reasons.append(failure.reason)
                if old is not None:
                    serving.append(old)
                continue
            try:
                fresh = await asyncio.to_thread(self._load, entry, old)
            except RepositoryError as exc:
                reason = str(exc)
                self.failures[key] = _Failure(fingerprint, reason)
                self.metrics.model_event(entry.name, entry.version, "load", ok=False)
                log.error(
                    "refused %s version %d%s: %s",
                    entry.name,
                    entry.version,
                    "; the loaded one keeps serving" if old is not None else "",
                    reason,
                )
                reasons.append(reason)
                if old is not None:
                    serving.append(old)
                continue
            self.failures.pop(key, None)
            self.metrics.model_event(entry.name, entry.version, "load", ok=True)
            log.info("%s %s version %d", "reloaded" if old else "added", name, entry.version)
            serving.append(fresh)
            if old is not None:
                retired.append(old)
        retired += current.values()  # versions whose directories are gone
        self.store = self.store.with_model(name, serving)  # the swap: one assignment
        for servable in retired:
            self._retire(servable)
        return reasons

    async def load(self, name: str) -> None:
        """The load API: (re)load ``name`` from disk; ``BadRequest`` naming any refusal."""
        if not is_model_name(name) or not (self.settings.repository / name).is_dir():
            raise NotFound(f"model {name[:128]!r} has no directory in the repository")
        self.unloaded.discard(name)
        reasons = await self.reload_model(name, retry_failed=True)
        if reasons:
            serving = self.store.models.get(name)
            note = f"; still serving version(s) {list(serving)}" if serving else "; not serving it"
            raise BadRequest(f"failed to load {name!r}: {'; '.join(reasons)}{note}")

    async def unload(self, name: str) -> None:
        """The unload API: stop serving every version of ``name`` (in-flight requests finish)."""
        async with self._guard():
            versions = self.store.models.get(name)
            if versions is None:
                raise NotFound(f"model {name[:128]!r} is not loaded")
            self.unloaded.add(name)
            self.store = self.store.with_model(name, [])
            for servable in versions.values():
                self._retire(servable)

    async def poll_once(self) -> None:
        """One repository scan: reload what changed, add what appeared, retire what vanished."""
        root = self.settings.repository
        try:
            on_disk = await asyncio.to_thread(_model_dirs, root)
        except OSError as exc:
            # A repository that vanished (an unmounted volume) or turned into a file: keep
            # serving what is loaded, say so once, and pick up again when it is back.
            if self._scan_errors.get("") != str(exc):
                log.error(
                    "cannot scan model repository %s: %s; models loaded keep serving", root, exc
                )
            self._scan_errors[""] = str(exc)
            return
        if self._scan_errors.pop("", None) is not None:
            log.info("model repository %s is readable again", root)
        for name in sorted(set(on_disk) | set(self.store.models)):
            if name in self.unloaded:
                continue
            if name not in on_disk:
                async with self._guard():
                    versions = self.store.models.get(name, {})
                    self.store = self.store.with_model(name, [])
                    for servable in versions.values():
                        self._retire(servable)
                log.info("%s left the repository: unloaded", name)
                continue
            await self.reload_model(name, retry_failed=False)

    def _retire(self, servable: Servable) -> None:
        """Let a replaced version finish what it queued, then close it (in the background)."""

        async def retire() -> None:
            await servable.batcher.drain(self.settings.drain_timeout_s)
            await servable.batcher.close()
            self.metrics.model_event(servable.name, servable.version, "unload", ok=True)
            log.info("retired %s version %d", servable.name, servable.version)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Triton's repository index: every version on disk or serving, with its state."""
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        try:
            entries = scan_repository(self.settings.repository)
        except RepositoryError as exc:
            log.warning("repository index: %s", exc)
            entries = []
        for entry in entries:
            key = (entry.name, entry.version)
            failure = self.failures.get(key)
            reason = (
                failure.reason
                if failure
                else "unloaded"
                if entry.name in self.unloaded
                else "not loaded yet"
            )
            rows[key] = {
                "name": entry.name,
                "version": str(entry.version),
                "state": "UNAVAILABLE",
                "reason": reason,
            }
        for servable in self.store:
            rows[(servable.name, servable.version)] = {
                "name": servable.name,
                "version": str(servable.version),
                "state": "READY",
                "reason": "",
            }
        listed = [rows[key] for key in sorted(rows)]
        return [row for row in listed if row["state"] == "READY"] if ready_only else listed

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Inside the running loop: start polling when configured."""
        interval = self.settings.poll_interval_s
        if interval > 0 and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval))

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:  # keep polling: one bad scan must not end hot reload
                log.exception("repository poll failed")

    def begin_drain(self) -> None:
        """Readiness turns 503 and new inference is refused; in-flight requests go on."""
        self.draining = True

    async def shutdown(self) -> None:
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for servable in list(self.store):
            await servable.batcher.close()
        for task in list(self._retiring):
            task.cancel()


_LAYOUT = "<repository>/<name>/<version>/{model.onnx, model.json}"


def _refuse_empty(root: Path, allowed: bool) -> None:
    """A repository with no version in it: ``RepositoryError`` with a hint at the layout,
    unless ``allowed`` (for the repository API) and the path is not a model's or a version's
    own directory, which no model could ever be added to correctly."""
    if (root / "model.json").is_file() or (root / "model.onnx").is_file():
        raise RepositoryError(
            f"model repository {root} is a version directory (it holds the model files "
            f"itself); the layout is {_LAYOUT}: point it at {root.parent.parent}"
        )
    if any(
        (d / "model.json").is_file() or (d / "model.onnx").is_file() for d in _subdirectories(root)
    ):
        raise RepositoryError(
            f"model repository {root} is a model directory (its subdirectories hold the model "
            f"files); the layout is {_LAYOUT}: point it at {root.parent}"
        )
    if not allowed:
        raise RepositoryError(
            f"model repository {root} holds no models: expected {_LAYOUT} (write one with "
            "`normserve export`), or set NORMSERVE_ALLOW_EMPTY_REPOSITORY=true to start empty "
            "and add models through the repository API"
        )


def _subdirectories(root: Path) -> list[Path]:
    try:
        return [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return []


def _scan_model(model_dir: Path) -> list[VersionEntry]:
    return scan_model(model_dir) if model_dir.is_dir() else []


def _model_dirs(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
