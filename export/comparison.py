"""Comparing outputs: the tolerance rule, one comparison, and the proof's one report type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Check", "Comparison", "Tolerance", "compare"]


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-4
    atol: float = 1e-5


@dataclass(frozen=True)
class Comparison:
    """One ONNX output checked against one reference."""

    max_abs: float
    max_rel: float
    ok: bool

    @classmethod
    def merge(cls, items: list[Comparison]) -> Comparison:
        return cls(
            max_abs=max(c.max_abs for c in items),
            max_rel=max(c.max_rel for c in items),
            ok=all(c.ok for c in items),
        )

    def to_dict(self) -> dict[str, object]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "ok": self.ok}


def compare(actual: np.ndarray, reference: np.ndarray, tol: Tolerance) -> Comparison:
    """Elementwise ``allclose`` with the largest errors; shapes must match exactly."""
    if actual.shape != reference.shape:
        return Comparison(max_abs=float("inf"), max_rel=float("inf"), ok=False)
    a = actual.astype(np.float64)
    r = reference.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        same_nonfinite = np.array_equal(np.isfinite(a), np.isfinite(r))
        finite = np.isfinite(a) & np.isfinite(r)
        a, r = a[finite], r[finite]
        if not same_nonfinite:
            return Comparison(max_abs=float("inf"), max_rel=float("inf"), ok=False)
    diff = np.abs(a - r)
    max_abs = float(diff.max(initial=0.0))
    max_rel = float((diff / np.maximum(np.abs(r), np.finfo(np.float64).tiny)).max(initial=0.0))
    ok = bool((diff <= tol.atol + tol.rtol * np.abs(r)).all())
    return Comparison(max_abs=max_abs, max_rel=max_rel, ok=ok)


@dataclass
class Check:
    """One witness of the proof (ONNX Runtime on CPU, the ONNX reference evaluator, the CUDA
    provider): its comparisons, each named ``"<setting> vs <reference>"``, or why it did not
    run. The one report type of the proof: the parity report is a list of these."""

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

    def failures(self, tol: str) -> list[str]:
        return [
            f"{self.name} {key}: max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g} ({tol})"
            for key, c in self.comparisons.items()
            if not c.ok
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
