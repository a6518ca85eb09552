"""Prometheus metrics: one registry per app (never the global one), plus Triton's names.

Native families are ``normserve_*``. The ``nv_inference_*`` block repeats the per-model counters
under the names Triton exposes, so dashboards built for Triton read normserve unchanged.

The families a request updates are loop-only (``LoopCounters``, ``LoopHistograms``): every
update happens on the event loop's thread (HTTP, gRPC and the batcher's callbacks all run there)
and so does every scrape (``/metrics`` is an async route), so a child is plain numbers without
a lock, and a histogram finds its bucket by bisection. prometheus_client's own children take a
lock per value and walk a histogram's bounds one by one; a request updated about ten of them.
Families updated from other threads (model loads) stay prometheus_client's.

Over 300 lines because the loop-only families and the registry that uses them are one module.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "CONTENT_TYPE",
    "TRITON_FAMILIES",
    "LiveVersion",
    "LoopCounter",
    "LoopCounters",
    "LoopHistogram",
    "LoopHistograms",
    "Metrics",
    "ModelMetrics",
    "bound_children",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
T = TypeVar("T")
Child = TypeVar("Child")


class LoopCounter:
    """One counter series, updated on the event loop's thread only."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopHistogram:
    """One histogram series, updated on the event loop's thread only: a count per bucket (the
    last one past every bound, ``+Inf``) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Bucket ``le=b`` holds values up to and including b: the first bound not below value.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class _LoopFamily(Collector, Generic[Child]):
    """Children by label values, made on first use and rendered at scrape time."""

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def _make(self) -> Child:
        raise NotImplementedError

    def labels(self, *values: str) -> Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self._make()
        return child


class LoopCounters(_LoopFamily[LoopCounter]):
    """A counter family of ``LoopCounter`` children (exposed as ``<name>_total``)."""

    def _make(self) -> LoopCounter:
        return LoopCounter()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            family.add_metric(list(values), child.value)
        yield family


class LoopHistograms(_LoopFamily[LoopHistogram]):
    """A histogram family of ``LoopHistogram`` children with the given bucket bounds."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        registry: CollectorRegistry,
        bounds: tuple[float, ...],
    ) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _make(self) -> LoopHistogram:
        return LoopHistogram(self.bounds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            buckets = list(zip(self._les, accumulate(child.counts), strict=True))
            family.add_metric(list(values), buckets, child.sum)
        yield family


def bound_children(make: Callable[..., T]) -> Callable[..., T]:
    """``make(*labels)`` remembered per label values: a family's child is looked up once, not
    validated, hashed and locked by ``labels()`` on every request. For labels drawn from small
    fixed sets only (statuses, route templates, parsed HTTP methods)."""
    children: dict[tuple[Hashable, ...], T] = {}

    def child(*key: Hashable) -> T:
        found = children.get(key)
        if found is None:
            found = children[key] = make(*key)
        return found

    return child


@dataclass(frozen=True)
class ModelMetrics:
    """The label-bound children of one model version (bound once: no lookups per request)."""

    latency: LoopHistogram
    queue: LoopHistogram
    compute: LoopHistogram
    batch_size: LoopHistogram
    requests: Callable[[int], LoopCounter]
    failures: Callable[[int], LoopCounter]
    cancelled: Callable[[str], None]
    """One request whose client left: ``"queued"`` (never ran) or ``"running"`` (dropped)."""


@dataclass(frozen=True)
class LiveVersion:
    """What a scrape reads from one served version: its queue depth and its Triton counters
    (``TRITON_FAMILIES`` name → value)."""

    model: str
    version: int
    queued: int
    triton: Mapping[str, int]


Live = Callable[[], Iterable[LiveVersion]]


class _LiveCollector(Collector):
    """Values read from the live versions at scrape time: queue depths."""

    def __init__(self, live: Live) -> None:
        self._live = live

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "normserve_queue_depth",
            "Requests waiting in a model version's batch queue",
            labels=["model", "version"],
        )
        for row in self._live():
            depth.add_metric([row.model, str(row.version)], row.queued)
        yield depth


class Metrics:
    """Every metric family of one app."""

    def __init__(self, live: Live) -> None:
        """``live`` lists the served versions at scrape time (the runtime's store)."""
        self._live = live
        self.registry = CollectorRegistry()
        r = self.registry
        per_model = ["model", "version"]
        self.requests = LoopCounters(
            "normserve_inference_requests",
            "Inference requests by model, version and HTTP status",
            [*per_model, "status"],
            r,
        )
        self.failures = LoopCounters(
            "normserve_inference_failures",
            "Failed inference requests (status >= 400) by model, version and HTTP status",
            [*per_model, "status"],
            r,
        )
        self.latency = LoopHistograms(
            "normserve_request_duration_seconds",
            "Inference request latency inside the server",
            per_model,
            r,
            _SECONDS,
        )
        self.queue = LoopHistograms(
            "normserve_queue_duration_seconds",
            "Time a request waited in the batch queue",
            per_model,
            r,
            _SECONDS,
        )
        self.compute = LoopHistograms(
            "normserve_compute_duration_seconds",
            "ONNX Runtime time of the batch a request ran in",
            per_model,
            r,
            _SECONDS,
        )
        self.batch_size = LoopHistograms(
            "normserve_batch_size", "Samples per executed batch", per_model, r, _BATCH
        )
        self.in_flight = Gauge(
            "normserve_inflight_requests", "HTTP requests being served now", registry=r
        )
        self.cancelled = LoopCounters(
            "normserve_cancelled_requests",
            "Inference requests whose client left before the answer, by model, version and "
            "stage: queued (left the queue, never computed) or running (computed, not answered)",
            [*per_model, "stage"],
            r,
        )
        self.model_events = Counter(
            "normserve_model_events",
            "Model version load and unload events by outcome",
            [*per_model, "event", "outcome"],
            registry=r,
        )
        self.http_requests = LoopCounters(
            "normserve_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            r,
        )
        self.http_request = bound_children(
            lambda method, route, status: self.http_requests.labels(method, route, str(status))
        )
        """The ``http_requests`` child of (method, route template, status)."""
        r.register(_LiveCollector(live))

    def for_model(self, name: str, version: int) -> ModelMetrics:
        labels = (name, str(version))
        return ModelMetrics(
            latency=self.latency.labels(*labels),
            queue=self.queue.labels(*labels),
            compute=self.compute.labels(*labels),
            batch_size=self.batch_size.labels(*labels),
            requests=bound_children(lambda status: self.requests.labels(*labels, str(status))),
            failures=bound_children(lambda status: self.failures.labels(*labels, str(status))),
            cancelled=lambda stage: self.cancelled.labels(*labels, stage).inc(),
        )

    def model_event(self, name: str, version: int, event: str, ok: bool) -> None:
        self.model_events.labels(name, str(version), event, "success" if ok else "failure").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry) + _triton_block(list(self._live()))


# Triton's per-model families, repeated under its names so Triton dashboards read normserve.
TRITON_FAMILIES = (
    ("nv_inference_request_success", "counter", "Number of successful inference requests"),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests"),
    ("nv_inference_count", "counter", "Number of inferences performed (samples)"),
    ("nv_inference_exec_count", "counter", "Number of model executions (batches)"),
    ("nv_inference_request_duration_us", "counter", "Cumulative request duration in us"),
    ("nv_inference_queue_duration_us", "counter", "Cumulative time requests spend queued in us"),
    (
        "nv_inference_compute_input_duration_us",
        "counter",
        "Cumulative input decode time in us",
    ),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative inference time in us"),
    (
        "nv_inference_compute_output_duration_us",
        "counter",
        "Cumulative output encode time in us",
    ),
    ("nv_inference_pending_request_count", "gauge", "Requests waiting in the queue"),
)


def _triton_block(rows: list[LiveVersion]) -> bytes:
    lines: list[str] = []
    for name, kind, help_text in TRITON_FAMILIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for row in rows:
            model = row.model.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name}{{model="{model}",version="{row.version}"}} {row.triton[name]}')
    return ("\n".join(lines) + "\n").encode() if lines else b""
