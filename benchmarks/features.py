"""What the service under test offers, found out at run time rather than assumed.

The service grows while the benchmarks are written: binary bodies are used when ``GET /v2``
lists the ``binary_tensor_data`` extension, and batching is switched through whatever
``service.settings.Settings`` offers (read from its fields, never hard-coded in one place).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from benchmarks.http_client import get
from benchmarks.v2_payload import BINARY_EXTENSION

__all__ = [
    "BatchingMode",
    "BatchingModes",
    "batching_modes",
    "env_for",
    "server_metadata",
    "server_stats",
    "settings_defaults",
    "stats_delta",
    "supports_binary",
]


def server_metadata(host: str, port: int) -> dict[str, Any]:
    response = get(host, port, "/v2")
    if response.status != 200:
        raise RuntimeError(f"GET /v2 answered {response.status}")
    return orjson.loads(response.body)


def supports_binary(metadata: dict[str, Any]) -> bool:
    return BINARY_EXTENSION in (metadata.get("extensions") or [])


def _fields() -> dict[str, Any]:
    from normserve.service.settings import Settings

    return dict(Settings.model_fields)


def settings_defaults() -> dict[str, Any]:
    """Every setting's default, as the benchmarks' record of the configuration measured."""
    out = {}
    for name, info in _fields().items():
        default = info.get_default(call_default_factory=True)
        out[name] = default if isinstance(default, int | float | str | bool) else str(default)
    return out


def env_for(values: dict[str, Any]) -> dict[str, str]:
    """Settings as ``NORMSERVE_*`` environment variables; unknown settings are refused."""
    fields = _fields()
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KeyError(f"service.settings.Settings has no field(s) {unknown}")
    return {
        f"NORMSERVE_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in values.items()
    }


@dataclass(frozen=True)
class BatchingMode:
    """Server settings and ``model.json`` changes that put the service in one batching mode."""

    settings: dict[str, Any]
    model_json: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "model_json": self.model_json}


@dataclass(frozen=True)
class BatchingModes:
    modes: dict[str, BatchingMode]  # "on" / "off"
    how: str


def batching_modes() -> BatchingModes:
    """``on`` (the service's default batcher) and ``off``, the latter found, in this order: a
    boolean setting about batching set false; a server-wide ``max_batch_size`` setting of 1; the
    model's own ``max_batch_size`` of 1 in ``model.json`` (the batcher then never merges two
    requests; the benchmarks send batch-1 requests, which that still admits).
    """
    fields = _fields()
    switch = next(
        (n for n, f in fields.items() if f.annotation is bool and "batch" in n.lower()), None
    )
    on = BatchingMode({}, {})
    if switch is not None:
        return BatchingModes(
            {"on": BatchingMode({switch: True}, {}), "off": BatchingMode({switch: False}, {})},
            f"setting {switch} true / false",
        )
    if "max_batch_size" in fields:
        return BatchingModes(
            {"on": on, "off": BatchingMode({"max_batch_size": 1}, {})},
            "defaults / setting max_batch_size=1",
        )
    return BatchingModes(
        {"on": on, "off": BatchingMode({}, {"max_batch_size": 1})},
        "defaults (dynamic batcher, max_queue_delay_ms "
        f"{fields['max_queue_delay_ms'].default if 'max_queue_delay_ms' in fields else 'n/a'}) / "
        "model.json max_batch_size=1 (the batcher never merges requests)",
    )


def server_stats(host: str, port: int, model: str) -> dict[str, Any] | None:
    """The model's Triton-shaped statistics (``GET /v2/models/stats``), or None if absent."""
    response = get(host, port, "/v2/models/stats")
    if response.status != 200:
        return None
    for item in orjson.loads(response.body).get("model_stats", []):
        if item.get("name") == model:
            return item
    return None


def stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """What the server itself measured between two snapshots: per-request means in ms (handler
    total, decode, queue, compute, encode) and the mean batch the batcher ran."""
    if before is None or after is None:
        return {}

    def d(stat: str, key: str) -> int:
        return int(after["inference_stats"][stat][key]) - int(before["inference_stats"][stat][key])

    requests = d("success", "count")
    if requests <= 0:
        return {"requests": 0}
    executions = int(after["execution_count"]) - int(before["execution_count"])
    samples = int(after["inference_count"]) - int(before["inference_count"])
    per_request_ms = {
        "handler": d("success", "ns") / requests / 1e6,
        "decode": d("compute_input", "ns") / requests / 1e6,
        "queue": d("queue", "ns") / requests / 1e6,
        "compute": d("compute_infer", "ns") / requests / 1e6,
        "encode": d("compute_output", "ns") / requests / 1e6,
    }
    return {
        "requests": requests,
        "failed": d("fail", "count"),
        "batches": executions,
        "mean_batch": samples / executions if executions else None,
        "per_request_ms": per_request_ms,
    }
