"""Proof that an ONNX graph computes what the eager PyTorch model computes.

Every comparison uses ``|onnx - ref| <= atol + rtol * |ref|`` elementwise (numpy's ``allclose``
rule) and reports the largest absolute and relative errors seen, so the margin is visible too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.errors import ParityError

__all__ = [
    "BATCH_SIZES",
    "Comparison",
    "ParityReport",
    "Tolerance",
    "compare",
    "make_session",
    "prove_parity",
    "require_parity",
]

BATCH_SIZES = (1, 2, 7, 33)
LEVELS = {
    "ORT_DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


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


def make_session(
    model_bytes: bytes, level: str, providers: list[str] | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.log_severity_level = 3
    return ort.InferenceSession(
        model_bytes, options, providers=providers or ["CPUExecutionProvider"]
    )


@dataclass
class ParityReport:
    tolerance: Tolerance
    batch_sizes: tuple[int, ...]
    providers: list[str]
    vs_eager_fp32: dict[str, Comparison] = field(default_factory=dict)  # level → comparison
    vs_eager_fp64: dict[str, Comparison] = field(default_factory=dict)
    eager_fp32_vs_fp64: Comparison | None = None
    batch_invariance: Comparison | None = None
    argmax_agreement: float | None = None
    argmax_mismatches: int = 0
    inputs: str = "random"

    @property
    def ok(self) -> bool:
        checks = [*self.vs_eager_fp32.values(), *self.vs_eager_fp64.values()]
        if self.batch_invariance is not None:
            checks.append(self.batch_invariance)
        return all(c.ok for c in checks) and self.argmax_mismatches == 0

    def failures(self) -> list[str]:
        out = []
        tol = f"rtol={self.tolerance.rtol:g}, atol={self.tolerance.atol:g}"
        for ref, table in (("eager fp32", self.vs_eager_fp32), ("eager fp64", self.vs_eager_fp64)):
            for level, c in table.items():
                if not c.ok:
                    out.append(
                        f"{level} vs {ref}: max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g} "
                        f"({tol})"
                    )
        if self.batch_invariance is not None and not self.batch_invariance.ok:
            out.append(f"batch invariance: max abs {self.batch_invariance.max_abs:.3g} ({tol})")
        if self.argmax_mismatches:
            out.append(f"argmax differs from eager on {self.argmax_mismatches} sample(s)")
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "rtol": self.tolerance.rtol,
            "atol": self.tolerance.atol,
            "batch_sizes": list(self.batch_sizes),
            "providers": self.providers,
            "inputs": self.inputs,
            "vs_eager_fp32": {k: v.to_dict() for k, v in self.vs_eager_fp32.items()},
            "vs_eager_fp64": {k: v.to_dict() for k, v in self.vs_eager_fp64.items()},
            "eager_fp32_vs_fp64": (
                self.eager_fp32_vs_fp64.to_dict() if self.eager_fp32_vs_fp64 else None
            ),
            "batch_invariance": self.batch_invariance.to_dict() if self.batch_invariance else None,
            "argmax_agreement": self.argmax_agreement,
        }


def _batches(inputs: torch.Tensor, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """Slices of ``inputs`` of each size, cycling through it when it is too short."""
    n = len(inputs)
    return [inputs[torch.arange(size) % n] for size in sizes]


def _argmax_mismatches(onnx_out: np.ndarray, eager: np.ndarray, tol: Tolerance) -> int:
    """Samples whose argmax differs where eager's top-2 margin is larger than the tolerance.

    A near-tie (margin within tolerance) may legitimately flip; anything else is a real error.
    """
    if eager.ndim != 2 or eager.shape[1] < 2:
        return 0
    a, e = onnx_out.argmax(axis=1), eager.argmax(axis=1)
    differ = np.nonzero(a != e)[0]
    bad = 0
    for i in differ:
        margin = abs(float(eager[i, e[i]]) - float(eager[i, a[i]]))
        if margin > tol.atol + tol.rtol * abs(float(eager[i, e[i]])):
            bad += 1
    return bad


@torch.no_grad()
def prove_parity(
    original: nn.Module,
    model_bytes: bytes,
    inputs: torch.Tensor,
    *,
    input_name: str,
    tolerance: Tolerance,
    classifier: bool,
    inputs_kind: str,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    providers: list[str] | None = None,
) -> ParityReport:
    """Compare ONNX Runtime (both optimization levels) with eager fp32 and fp64 copies.

    ``original`` is the eval-mode, unfolded model; a float64 deep copy of it is the reference
    that neither float32 path can claim to be closer to by luck.
    """
    providers = providers or ["CPUExecutionProvider"]
    reference64 = copy.deepcopy(original).double().eval()
    report = ParityReport(
        tolerance=tolerance, batch_sizes=batch_sizes, providers=providers, inputs=inputs_kind
    )
    sessions = {level: make_session(model_bytes, level, providers) for level in LEVELS}
    per_level32: dict[str, list[Comparison]] = {level: [] for level in LEVELS}
    per_level64: dict[str, list[Comparison]] = {level: [] for level in LEVELS}
    eager_gaps: list[Comparison] = []
    agree = total = 0
    largest: tuple[np.ndarray, torch.Tensor] | None = None
    for batch in _batches(inputs, batch_sizes):
        eager32 = original(batch).numpy()
        eager64 = reference64(batch.double()).numpy()
        eager_gaps.append(compare(eager32, eager64, tolerance))
        feed = {input_name: batch.numpy()}
        for level, session in sessions.items():
            (out,) = session.run(None, feed)[:1]
            per_level32[level].append(compare(out, eager32, tolerance))
            per_level64[level].append(compare(out, eager64, tolerance))
            if classifier:
                report.argmax_mismatches += _argmax_mismatches(out, eager32, tolerance)
                if level == "ORT_ENABLE_ALL":
                    agree += int((out.argmax(axis=1) == eager32.argmax(axis=1)).sum())
                    total += len(out)
            if level == "ORT_ENABLE_ALL" and (largest is None or len(batch) > len(largest[1])):
                largest = (out, batch)
    report.vs_eager_fp32 = {k: Comparison.merge(v) for k, v in per_level32.items()}
    report.vs_eager_fp64 = {k: Comparison.merge(v) for k, v in per_level64.items()}
    report.eager_fp32_vs_fp64 = Comparison.merge(eager_gaps)
    if classifier and total:
        report.argmax_agreement = agree / total
    if largest is not None:
        report.batch_invariance = _batch_invariance(
            sessions["ORT_ENABLE_ALL"], input_name, *largest, tolerance
        )
    return report


def _batch_invariance(
    session: ort.InferenceSession,
    input_name: str,
    batched_out: np.ndarray,
    batch: torch.Tensor,
    tolerance: Tolerance,
) -> Comparison:
    """Sample i run alone equals row i of the batched run."""
    singles = [
        session.run(None, {input_name: batch[i : i + 1].numpy()})[0] for i in range(len(batch))
    ]
    return compare(np.concatenate(singles, axis=0), batched_out, tolerance)


def require_parity(report: ParityReport) -> None:
    """Raise ``ParityError`` naming every failed check."""
    if not report.ok:
        raise ParityError("parity check failed: " + "; ".join(report.failures()))
