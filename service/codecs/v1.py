"""The KServe V1 view: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out.

Each instance is one sample: a nested list for a single-input model, or an object mapping every
input name to its nested list. For a model with labels, the first output of shape
``[N, len(labels)]`` gives each prediction its top-k view: the best label, its probability, and
the ``top_k`` best (probabilities are the output itself when its rows already are
distributions, else its softmax). Otherwise each prediction is the output row (one output) or
an object of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from normserve.service.codecs.v2 import check_shape, to_array, top_k_indices
from normserve.service.errors import BadRequest
from normserve.service.runtime.loader import LoadedModel

__all__ = ["PredictRequest", "decode_predict_request", "encode_predictions", "probabilities"]


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A decoded ``:predict`` body: inputs by name, one row per instance, every output."""

    inputs: dict[str, np.ndarray]
    batch_size: int
    output_names: list[str]
    top_k: int
    timeout_s: float | None = None


def decode_predict_request(
    body: dict[str, Any], model: LoadedModel, default_top_k: int
) -> PredictRequest:
    """Inputs by name, the number of instances, and k for the top-k view."""
    unknown = set(body) - {"instances", "top_k"}
    if unknown:
        raise BadRequest(f"unknown key(s) {sorted(unknown)[:4]}; expected instances and top_k")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest("instances: expected a non-empty list, one item per sample")
    top_k = body.get("top_k", default_top_k)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise BadRequest("top_k: expected a positive integer")
    specs = model.config.inputs
    count = len(instances)
    columns: dict[str, list[Any]] = {}
    if len(specs) == 1 and not isinstance(instances[0], dict):
        columns[specs[0].name] = instances
    else:
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict):
                raise BadRequest(
                    f"instances[{index}]: expected an object with the inputs "
                    f"{[s.name for s in specs]}"
                )
            missing = [s.name for s in specs if s.name not in instance]
            extra = sorted(set(instance) - {s.name for s in specs})
            if missing or extra:
                raise BadRequest(
                    f"instances[{index}]: expected exactly the inputs {[s.name for s in specs]}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra[:4]}" if extra else "")
                )
            for spec in specs:
                columns.setdefault(spec.name, []).append(instance[spec.name])
    inputs = {}
    for spec in specs:
        field = f"instances ({spec.name})"
        try:
            shape = np.shape(columns[spec.name])
        except (ValueError, RecursionError):
            raise BadRequest(f"{field}: ragged nesting; expected a regular array") from None
        shape = (count, *shape[1:])
        check_shape(shape, spec, field + " shape", model.config.max_batch_size)
        inputs[spec.name] = to_array(columns[spec.name], spec, shape, field)
    outputs = [s.name for s in model.config.outputs]
    return PredictRequest(inputs, count, outputs, top_k)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows that already are distributions stay; anything else goes through a softmax."""
    scores = scores.astype(np.float64)
    if (
        scores.size
        and np.all(scores >= 0.0)
        and np.all(scores <= 1.0)
        and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
    ):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _top_k_view(scores: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    probs = probabilities(scores)
    predictions = []
    for row, picks in zip(probs, top_k_indices(probs, k), strict=True):
        ranked = [
            {"label": labels[i], "index": int(i), "probability": float(row[i])} for i in picks
        ]
        predictions.append({**ranked[0], "top_k": ranked})
    return predictions


def encode_predictions(model: LoadedModel, outputs: list[np.ndarray], top_k: int) -> dict[str, Any]:
    """``{"predictions": [...]}`` for outputs in the model's output order."""
    config = model.config
    specs = config.outputs
    labels = config.labels
    scored = next(
        (o for o in outputs if labels and o.ndim == 2 and o.shape[1] == len(labels)), None
    )
    if scored is not None:
        predictions: list[Any] = _top_k_view(scored, labels, top_k)  # type: ignore[arg-type]
    elif len(specs) == 1:
        predictions = outputs[0].tolist()
    else:
        names = [s.name for s in specs]
        columns = [o.tolist() for o in outputs]
        predictions = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "predictions": predictions,
    }
