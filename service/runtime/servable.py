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

__all__ = ["Servable", "batch_policy", "inline_batch_samples", "make_servable"]

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


def inline_batch_samples(model: LoadedModel, bound_ms: float) -> int:
    """The largest batch (in samples) expected to run within ``bound_ms``, from the version's
    timings at load (a straight line through one sample and a full batch); 0 when none is."""
    if model.batch_ms is None or bound_ms <= 0:
        return 0
    one, full = model.batch_ms
    if one > bound_ms:
        return 0
    most = model.config.max_batch_size
    per_sample = max(full - one, 0.0) / (most - 1) if most > 1 else 0.0
    if per_sample == 0.0:
        return most
    return min(most, 1 + int((bound_ms - one) / per_sample))


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
    inline_samples = inline_batch_samples(model, settings.inline_batch_ms)
    log.info(
        "%s version %d: %s",
        model.name,
        model.version,
        "every batch runs on the version's thread (a dynamic axis, or one sample over "
        f"the inline bound of {settings.inline_batch_ms:g} ms)"
        if model.batch_ms is None
        else f"batches of up to {inline_samples} sample(s) run on the event loop, larger ones "
        f"on the version's thread (1 sample: {model.batch_ms[0]:.3f} ms, "
        f"{model.config.max_batch_size}: {model.batch_ms[1]:.3f} ms; "
        f"inline bound {settings.inline_batch_ms:g} ms)",
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
        inline_samples=inline_samples,
    )
    return Servable(model, batcher, stats, entry, fingerprint)
