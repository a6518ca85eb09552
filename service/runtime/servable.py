"""A served model version: the loaded model, its batcher and its statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from normserve.model_repository import ModelConfig, VersionEntry
from normserve.service.runtime.batcher import Batcher, BatchPolicy
from normserve.service.runtime.loader import LoadedModel
from normserve.service.settings import Settings
from normserve.service.telemetry.metrics import Metrics
from normserve.service.telemetry.stats import ModelStats

__all__ = ["Servable", "batch_policy", "make_servable"]

log = logging.getLogger("normserve.service")


@dataclass(frozen=True)
class Servable:
    model: LoadedModel
    batcher: Batcher
    stats: ModelStats
    entry: VersionEntry
    fingerprint: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def batch_policy(config: ModelConfig, settings: Settings) -> BatchPolicy:
    """Server defaults, overridden by ``model.json``'s ``dynamic_batching`` where it says so."""
    o = config.batching
    delay_ms = settings.max_queue_delay_ms if o.max_queue_delay_ms is None else o.max_queue_delay_ms
    timeout_ms = settings.queue_timeout_ms if o.queue_timeout_ms is None else o.queue_timeout_ms
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size if o.max_queue_size is None else o.max_queue_size,
        queue_timeout_s=timeout_ms / 1000.0,
    )


def make_servable(
    model: LoadedModel,
    entry: VersionEntry,
    fingerprint: tuple[int, ...],
    settings: Settings,
    metrics: Metrics,
    stats: ModelStats | None = None,
) -> Servable:
    """Wrap a loaded model; ``stats`` carries counts over when a version is reloaded in place."""
    stats = stats or ModelStats(metrics.for_model(model.name, model.version))
    full_batch_ms = model.full_batch_ms
    inline = full_batch_ms is not None and full_batch_ms <= settings.inline_batch_ms
    log.info(
        "%s version %d: batches run %s (a full batch of %d: %s)",
        model.name,
        model.version,
        "on the event loop" if inline else "on the version's thread",
        model.config.max_batch_size,
        "not timed: a dynamic axis, or one sample over the inline bound"
        if full_batch_ms is None
        else f"{full_batch_ms:.3f} ms, inline bound {settings.inline_batch_ms:g} ms",
    )
    batcher = Batcher(
        model.run,
        batch_policy(model.config, settings),
        [spec.name for spec in model.config.outputs],
        name=f"{model.name}/{model.version}",
        on_batch=stats.batch_done,
        on_cancel=metrics.for_model(model.name, model.version).cancelled,
        retry_after_s=settings.retry_after_s,
        input_sensitive=model.input_sensitive,
        inline=inline,
    )
    return Servable(model, batcher, stats, entry, fingerprint)
