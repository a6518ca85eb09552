"""The proof's tolerance rule, one comparison, and the proof's one report type.

Every output tensor of every witness (ONNX Runtime at each optimization level, the ONNX
reference evaluator, the CUDA provider) is compared with a float64 reference: the eager model
with its floating parameters and inputs cast to float64. The eager model in its own dtype is
compared with the same reference, and that error is the yardstick:

    error(witness) <= multiple * error(eager) + floor * eps(dtype) * scale

with ``error`` the largest absolute difference from the reference over every element of every
batch, ``scale`` the largest absolute reference value, ``eps(dtype)`` the machine epsilon of
the output's dtype (float16 9.8e-4, float32 1.2e-7, float64 2.2e-16; 0 for integer and bool
outputs, which must then match as closely as eager does) and, by default, ``multiple = 8`` and
``floor = 16``.

Why this rule: a correct export computes the same function with other roundings, so its error
against the exact function is of the size of eager's own (measured: 0.5x to 1.4x eager's on
float32 and float16 models, depthwise convs with tiny running variances, a BatchNorm used twice;
its error never exceeded 2.3 eps x scale on the test models). A wrong fold changes the function:
forgetting eps, using var instead of sqrt(var), dropping the shift or scaling the wrong
ConvTranspose axis gave 300x to 10^10x eager's error on the same models. An elementwise
``rtol``/``atol`` against eager float32 refuses correct exports instead: near-zero outputs make
any relative error large, and a large folded scale amplifies float32 rounding for eager and
export alike. The floor covers outputs eager computes exactly (error 0), where any rounding of
another kernel would otherwise fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Batch", "Check", "Comparison", "Tolerance", "compare", "compare_outputs", "dtype_eps"]


def dtype_eps(dtype: np.dtype) -> float:
    """Machine epsilon of a floating dtype; 0 for integers and bool (they compare exactly)."""
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0


@dataclass(frozen=True)
class Tolerance:
    """``error <= multiple * eager_error + floor * eps(dtype) * scale`` (see the module doc)."""

    multiple: float = 8.0
    floor: float = 16.0

    def bound(self, eager_error: float, scale: float, dtype: np.dtype) -> float:
        """The largest error a witness may have on an output with these figures."""
        return self.multiple * eager_error + self.floor * dtype_eps(dtype) * scale

    def describe(self) -> str:
        return f"{self.multiple:g} x eager's error + {self.floor:g} eps x scale"

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": "error <= multiple * eager_error + floor * eps(dtype) * scale",
            "multiple": self.multiple,
            "floor": self.floor,
        }


@dataclass(frozen=True)
class Comparison:
    """One output of one witness against the float64 reference, over every batch."""

    error: float  # largest |witness - reference|
    eager_error: float  # largest |eager in the model's dtype - reference|
    scale: float  # largest |reference|
    bound: float  # the error the rule allows
    ok: bool

    @property
    def ratio(self) -> float | None:
        """The witness's error in multiples of eager's (None when eager's is 0)."""
        return self.error / self.eager_error if self.eager_error > 0 else None

    def describe(self) -> str:
        ratio = f" = {self.ratio:.3g} x eager's" if self.ratio is not None else ""
        return (
            f"max error {self.error:.3g}{ratio} (eager {self.eager_error:.3g}, scale "
            f"{self.scale:.3g}, allowed {self.bound:.3g})"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "error": self.error,
            "eager_error": self.eager_error,
            "scale": self.scale,
            "bound": self.bound,
            "ratio": self.ratio,
            "ok": self.ok,
        }


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _max_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference; infinite when the non-finite values do not line up."""
    finite = np.isfinite(reference)
    same_finite = np.array_equal(np.isfinite(actual), finite)
    if not same_finite or not np.array_equal(actual[~finite], reference[~finite], equal_nan=True):
        return float("inf")
    return float(np.abs(actual[finite] - reference[finite]).max(initial=0.0))


def compare(
    witness: list[np.ndarray],
    eager: list[np.ndarray],
    reference: list[np.ndarray],
    tolerance: Tolerance,
    dtype: np.dtype,
    *,
    against: list[np.ndarray] | None = None,
) -> Comparison:
    """Apply the rule to one output over every batch (lists of per-batch arrays).

    ``dtype`` is the output's dtype in the model (its eps sets the floor). The witness's error
    is measured against the float64 ``reference``, or against ``against`` (batch invariance:
    each sample run alone against the batched run) with the same allowance. Shapes must match
    batch for batch; a mismatch is an infinite error.
    """
    target = reference if against is None else against
    if [np.shape(w) for w in witness] != [np.shape(r) for r in target]:
        return Comparison(float("inf"), float("inf"), float("inf"), 0.0, ok=False)
    ref = _flat(reference)
    scale = float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0))
    eager_error = _max_error(_flat(eager), ref)
    error = _max_error(_flat(witness), _flat(target))
    bound = tolerance.bound(eager_error, scale, dtype) if np.isfinite(eager_error) else 0.0
    ok = bool(np.isfinite(error) and error <= bound)
    return Comparison(error, eager_error, scale, bound, ok)


@dataclass(frozen=True)
class Batch:
    """One batch of the proof: the inputs (one tensor per model input), and per output the
    eager model's answer in its own dtype and the float64 reference's."""

    inputs: tuple[Any, ...]  # torch tensors; typed loosely so this module needs no torch
    eager: list[np.ndarray]
    reference: list[np.ndarray]

    @property
    def size(self) -> int:
        return len(self.inputs[0])

    def feed(self, names: list[str]) -> dict[str, np.ndarray]:
        """The ONNX Runtime feed: input name → array."""
        return {name: t.numpy() for name, t in zip(names, self.inputs, strict=True)}


@dataclass
class Check:
    """One witness of the proof (ONNX Runtime on CPU, the ONNX reference evaluator, the CUDA
    provider): its comparisons, each named ``"<setting> <output>"``, or why it did not run.
    The one report type of the proof: the parity report is a list of these."""

    name: str
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        return self.skipped is None

    @property
    def ok(self) -> bool:
        """True when every comparison passed (a skipped check is reported, not failed)."""
        return all(c.ok for c in self.comparisons.values())

    def failures(self) -> list[str]:
        return [
            f"{self.name} {key}: {c.describe()}" for key, c in self.comparisons.items() if not c.ok
        ]

    def to_dict(self) -> dict[str, object]:
        if self.skipped is not None:
            return {"ran": False, "skipped": self.skipped, **self.details}
        return {
            "ran": True,
            "ok": self.ok,
            **self.details,
            "comparisons": {k: v.to_dict() for k, v in self.comparisons.items()},
        }


def compare_outputs(
    setting: str,
    witness: list[list[np.ndarray]],
    batches: list[Batch],
    output_names: list[str],
    tolerance: Tolerance,
) -> dict[str, Comparison]:
    """One comparison per output: ``witness[b][o]`` is the witness's output o on batch b.

    Named ``"<setting> <output>"``; the output's dtype is eager's.
    """
    found = {}
    for o, name in enumerate(output_names):
        found[f"{setting} {name}"] = compare(
            [outs[o] for outs in witness],
            [b.eager[o] for b in batches],
            [b.reference[o] for b in batches],
            tolerance,
            batches[0].eager[o].dtype,
        )
    return found
