"""Proof that an ONNX graph computes what the eager PyTorch model computes.

Every comparison uses ``|onnx - ref| <= atol + rtol * |ref|`` elementwise (numpy's ``allclose``
rule) and reports the largest absolute and relative errors seen, so the margin is visible too.

The proof (DESIGN.md §3.7): ONNX Runtime on CPU at ``ORT_DISABLE_ALL`` and ``ORT_ENABLE_ALL``
against the eager original in float32 and against a float64 copy of it, at batch sizes 1, 2, 7
and 33; argmax agreement for classifiers; batch invariance; then two cross-checks that each
either pass or say why they did not run: the ONNX reference evaluator (a second, independent
implementation of the ONNX operators) and the CUDA execution provider with TF32 off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from normserve.export.comparison import Check, Comparison, Tolerance, compare
from normserve.export.cross_checks import cuda_check, reference_evaluator_check
from normserve.export.errors import ExportError, ParityError
from normserve.export.sessions import LEVELS, make_session

__all__ = ["BATCH_SIZES", "ParityReport", "prove_parity", "require_parity"]

BATCH_SIZES = (1, 2, 7, 33)
NAME_ORT = "ONNX Runtime CPU"


@dataclass
class ParityReport:
    """The proof's verdict: one ``Check`` per witness (ONNX Runtime on CPU first), and the
    facts about eager itself (its float32 gap to float64), batch invariance and argmax."""

    tolerance: Tolerance
    batch_sizes: tuple[int, ...]
    providers: list[str]
    checks: list[Check] = field(default_factory=list)
    eager_fp32_vs_fp64: Comparison | None = None
    batch_invariance: Comparison | None = None
    argmax_agreement: float | None = None
    argmax_mismatches: int = 0
    inputs: str = "random"

    def check(self, name: str) -> Check | None:
        """The witness called ``name``, if it took part."""
        return next((c for c in self.checks if c.name == name), None)

    @property
    def ok(self) -> bool:
        invariant = self.batch_invariance is None or self.batch_invariance.ok
        return all(c.ok for c in self.checks) and invariant and self.argmax_mismatches == 0

    def failures(self) -> list[str]:
        tol = f"rtol={self.tolerance.rtol:g}, atol={self.tolerance.atol:g}"
        out = [line for check in self.checks for line in check.failures(tol)]
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
            "checks": {check.name: check.to_dict() for check in self.checks},
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


def _as_numpy(out: object) -> np.ndarray:
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"the model returns {type(out).__name__}, not a single tensor")
    return out.detach().cpu().numpy()


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
    cross_checks: bool = True,
) -> ParityReport:
    """Compare ONNX Runtime (both optimization levels) with eager fp32 and fp64 copies.

    ``original`` is the eval-mode, unfolded model; a float64 deep copy of it is the reference
    that neither float32 path can claim to be closer to by luck. ``original`` is not modified.
    """
    providers = ["CPUExecutionProvider"]
    reference64 = copy.deepcopy(original).double().eval()
    report = ParityReport(
        tolerance=tolerance, batch_sizes=batch_sizes, providers=providers, inputs=inputs_kind
    )
    sessions = {level: make_session(model_bytes, level, list(providers)) for level in LEVELS}
    per_level32: dict[str, list[Comparison]] = {level: [] for level in LEVELS}
    per_level64: dict[str, list[Comparison]] = {level: [] for level in LEVELS}
    eager_gaps: list[Comparison] = []
    agree = total = 0
    largest: tuple[np.ndarray, torch.Tensor] | None = None
    batches = _batches(inputs, batch_sizes)
    eager32s, eager64s = [], []
    for batch in batches:
        eager32 = _as_numpy(original(batch))
        eager64 = _as_numpy(reference64(batch.double()))
        eager32s.append(eager32)
        eager64s.append(eager64)
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
    comparisons = {f"{k} vs eager fp32": Comparison.merge(v) for k, v in per_level32.items()}
    comparisons |= {f"{k} vs eager fp64": Comparison.merge(v) for k, v in per_level64.items()}
    report.checks.append(Check(NAME_ORT, comparisons=comparisons))
    report.eager_fp32_vs_fp64 = Comparison.merge(eager_gaps)
    if classifier and total:
        report.argmax_agreement = agree / total
    if largest is not None:
        report.batch_invariance = _batch_invariance(
            sessions["ORT_ENABLE_ALL"], input_name, *largest, tolerance
        )
    if cross_checks:
        references = list(zip(batches, eager32s, eager64s, strict=True))
        report.checks.append(
            reference_evaluator_check(model_bytes, references, input_name, tolerance)
        )
        report.checks.append(cuda_check(original, model_bytes, references, input_name, tolerance))
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
