"""Per model version statistics, in Triton's ``/stats`` shape, mirrored into Prometheus.

Every update happens on the event loop thread (request completion and the batcher's batch
callback), so plain integers need no lock.
"""

from __future__ import annotations

import time
from typing import Any

from normserve.service.telemetry.metrics import ModelMetrics

__all__ = ["ModelStats"]

_NS = 1_000_000_000


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * _NS)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """Counts and cumulative times of one model version since it was first loaded."""

    def __init__(self, metrics: ModelMetrics) -> None:
        self._metrics = metrics
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        self.inference_count = 0  # samples
        self.execution_count = 0  # batches
        self.last_inference_ms = 0
        self._batches: dict[int, _Duration] = {}

    def batch_done(self, samples: int, compute_s: float) -> None:
        """The batcher ran one batch of ``samples`` rows."""
        self.execution_count += 1
        self.inference_count += samples
        self._batches.setdefault(samples, _Duration()).add(compute_s)
        self._metrics.batch_size.observe(samples)

    def request_done(
        self,
        latency_s: float,
        queue_s: float,
        compute_s: float,
        input_s: float,
        output_s: float,
    ) -> None:
        """A request answered 200 with these timings."""
        self.success.add(latency_s)
        self.queue.add(queue_s)
        self.compute_infer.add(compute_s)
        self.compute_input.add(input_s)
        self.compute_output.add(output_s)
        self.last_inference_ms = int(time.time() * 1000)
        m = self._metrics
        m.requests(200).inc()
        m.latency.observe(latency_s)
        m.queue.observe(queue_s)
        m.compute.observe(compute_s)

    def request_failed(self, status: int, latency_s: float) -> None:
        self.fail.add(latency_s)
        self._metrics.requests(status).inc()
        self._metrics.failures(status).inc()
        self._metrics.latency.observe(latency_s)

    def to_triton(self, name: str, version: int) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": duration.to_dict(),
                    "compute_output": zero,
                }
                for size, duration in sorted(self._batches.items())
            ],
            "memory_usage": [],
        }

    def triton_values(self, pending: int) -> dict[str, int]:
        """Triton's metric families (``TRITON_FAMILIES``) by name; durations in microseconds."""
        return {
            "nv_inference_request_success": self.success.count,
            "nv_inference_request_failure": self.fail.count,
            "nv_inference_count": self.inference_count,
            "nv_inference_exec_count": self.execution_count,
            "nv_inference_request_duration_us": self.success.ns // 1000,
            "nv_inference_queue_duration_us": self.queue.ns // 1000,
            "nv_inference_compute_input_duration_us": self.compute_input.ns // 1000,
            "nv_inference_compute_infer_duration_us": self.compute_infer.ns // 1000,
            "nv_inference_compute_output_duration_us": self.compute_output.ns // 1000,
            "nv_inference_pending_request_count": pending,
        }
