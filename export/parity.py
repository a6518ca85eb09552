"""Proof that an ONNX graph computes what the eager PyTorch model computes.

The proof (DESIGN.md §3.7): ONNX Runtime on CPU at ``ORT_DISABLE_ALL`` and ``ORT_ENABLE_ALL``,
every output, against a float64 reference of the eager model (its floating parameters and
inputs cast to float64), at batch sizes 1, 2, 7 and 33, and again at batch sizes 1 and 7 with
every dynamic axis twice as long; the error allowed is a multiple of the eager model's own
rounding error in its dtype plus a floor relative to the output's scale (export/comparison.py
has the rule and why). Then: argmax agreement for classifiers (a flip counts only when the
float64 reference's top-2 margin is wider than twice the allowed error); batch invariance
(each sample of the largest batch run alone, against the batched run); and two cross-checks
that each pass or say why they did not run: the ONNX reference evaluator (a second, independent
implementation of the ONNX operators) and the CUDA execution provider with TF32 off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from normserve.export.comparison import Batch, Check, Tolerance, compare, compare_outputs
from normserve.export.cross_checks import cuda_check, reference_evaluator_check
from normserve.export.errors import ExportError, ParityError
from normserve.export.sessions import LEVELS, make_session
from normserve.export.signature import flatten_outputs

__all__ = [
    "BATCH_SIZES",
    "NAME_ORT",
    "OTHER_SIZE_BATCHES",
    "ParityReport",
    "proof_batches",
    "prove_parity",
    "require_parity",
]

BATCH_SIZES = (1, 2, 7, 33)
OTHER_SIZE_BATCHES = (1, 7)  # batch sizes proven at the second size of the dynamic axes
NAME_ORT = "ONNX Runtime CPU"
NAME_INVARIANCE = "batch invariance"


@dataclass
class ParityReport:
    """The proof's verdict: one ``Check`` per witness (ONNX Runtime on CPU first, then batch
    invariance and the cross-checks), and the argmax figures for classifiers."""

    tolerance: Tolerance
    batch_sizes: tuple[int, ...]
    providers: list[str]
    output_names: list[str]
    checks: list[Check] = field(default_factory=list)
    argmax_agreement: float | None = None
    argmax_mismatches: int = 0
    inputs: str = "random"
    random_inputs: bool = False
    other_sizes: dict[str, list[int]] = field(default_factory=dict)  # "input:axis" → sizes

    def check(self, name: str) -> Check | None:
        """The witness called ``name``, if it took part."""
        return next((c for c in self.checks if c.name == name), None)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and self.argmax_mismatches == 0

    def failures(self) -> list[str]:
        out = [line for check in self.checks for line in check.failures()]
        if self.argmax_mismatches:
            out.append(
                f"argmax differs from the float64 reference on {self.argmax_mismatches} "
                "sample(s) whose top-2 margin is wider than the allowed error"
            )
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "tolerance": self.tolerance.to_dict(),
            "batch_sizes": list(self.batch_sizes),
            "other_sizes": self.other_sizes,
            "providers": self.providers,
            "inputs": self.inputs,
            "random_inputs": self.random_inputs,
            "outputs": self.output_names,
            "checks": {check.name: check.to_dict() for check in self.checks},
            "argmax_agreement": self.argmax_agreement,
        }


def _as_float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.double() if tensor.is_floating_point() else tensor


def _numpy(outputs: object) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in flatten_outputs(outputs)]


@torch.no_grad()
def proof_batches(
    original: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    batch_sizes: tuple[int, ...],
    other_size: tuple[torch.Tensor, ...] | None = None,
) -> list[Batch]:
    """The proof's batches (inputs cycled to fill each size), each with eager's answers in the
    model's dtype and the float64 reference's. ``original`` is not modified."""
    reference64 = copy.deepcopy(original).double().eval()
    plan = [(inputs, size) for size in batch_sizes]
    if other_size is not None:
        plan += [(other_size, size) for size in OTHER_SIZE_BATCHES]
    batches = []
    for source, size in plan:
        index = torch.arange(size) % len(source[0])
        tensors = tuple(t[index].contiguous() for t in source)
        try:
            eager = _numpy(original(*tensors))
            reference = _numpy(reference64(*(_as_float64(t) for t in tensors)))
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            shapes = [list(t.shape) for t in tensors]
            raise ExportError(f"the model cannot run on inputs of shapes {shapes}: {exc}") from exc
        batches.append(Batch(tensors, eager, reference))
    return batches


def _argmax_figures(
    outputs: list[np.ndarray], batches: list[Batch], bound: float
) -> tuple[int, int, int]:
    """(mismatches, agreements with eager, samples) for the first output of a classifier.

    A sample counts as a mismatch when its argmax differs from the float64 reference's and
    the reference's top-2 margin is wider than twice the allowed error (a near-tie may flip).
    """
    mismatches = agree = total = 0
    for out, batch in zip(outputs, batches, strict=True):
        ref = batch.reference[0]
        if ref.ndim != 2 or ref.shape[1] < 2:
            return 0, 0, 0
        top2 = np.sort(ref, axis=1)[:, -2:]
        wide = (top2[:, 1] - top2[:, 0]) > 2 * bound
        mismatches += int(((out.argmax(axis=1) != ref.argmax(axis=1)) & wide).sum())
        agree += int((out.argmax(axis=1) == batch.eager[0].argmax(axis=1)).sum())
        total += len(out)
    return mismatches, agree, total


def prove_parity(
    original: nn.Module,
    model_bytes: bytes,
    batches: list[Batch],
    *,
    input_names: list[str],
    output_names: list[str],
    tolerance: Tolerance,
    classifier: bool,
    inputs_kind: str,
    random_inputs: bool = False,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    other_sizes: dict[str, list[int]] | None = None,
    cross_checks: bool = True,
) -> ParityReport:
    """Run every witness on ``batches`` (from ``proof_batches``) and apply the rule.

    ``original`` is the eval-mode, unfolded model in its own dtype; it is not modified.
    """
    providers = ["CPUExecutionProvider"]
    report = ParityReport(
        tolerance=tolerance,
        batch_sizes=batch_sizes,
        providers=providers,
        output_names=output_names,
        inputs=inputs_kind,
        random_inputs=random_inputs,
        other_sizes=other_sizes or {},
    )
    comparisons = {}
    for level in LEVELS:
        session = make_session(model_bytes, level, list(providers))
        outputs = [session.run(output_names, b.feed(input_names)) for b in batches]
        comparisons |= compare_outputs(level, outputs, batches, output_names, tolerance)
        if level == "ORT_ENABLE_ALL":
            largest = max(range(len(batches)), key=lambda i: batches[i].size)
            report.checks.append(Check(NAME_ORT, comparisons=comparisons))
            report.checks.append(
                _batch_invariance(
                    session,
                    batches[largest],
                    outputs[largest],
                    input_names,
                    output_names,
                    tolerance,
                )
            )
        if classifier:
            first = comparisons[f"{level} {output_names[0]}"]
            bad, agree, total = _argmax_figures([o[0] for o in outputs], batches, first.bound)
            report.argmax_mismatches += bad
            if level == "ORT_ENABLE_ALL" and total:
                report.argmax_agreement = agree / total
    if cross_checks:
        report.checks.append(
            reference_evaluator_check(model_bytes, batches, input_names, output_names, tolerance)
        )
        report.checks.append(
            cuda_check(original, model_bytes, batches, input_names, output_names, tolerance)
        )
    return report


def _batch_invariance(
    session: object,
    batch: Batch,
    batched: list[np.ndarray],
    input_names: list[str],
    output_names: list[str],
    tolerance: Tolerance,
) -> Check:
    """Sample i run alone equals row i of the batched run, within the allowed error."""
    singles = []
    for i in range(batch.size):
        alone = Batch(tuple(t[i : i + 1] for t in batch.inputs), [], [])
        singles.append(session.run(output_names, alone.feed(input_names)))  # type: ignore[attr-defined]
    comparisons = {}
    for o, name in enumerate(output_names):
        comparisons[f"batch of {batch.size} {name}"] = compare(
            [np.concatenate([s[o] for s in singles], axis=0)],
            [batch.eager[o]],
            [batch.reference[o]],
            tolerance,
            batch.eager[o].dtype,
            against=[batched[o]],
        )
    return Check(NAME_INVARIANCE, comparisons=comparisons)


def require_parity(report: ParityReport) -> None:
    """Raise ``ParityError`` naming every failed check."""
    if not report.ok:
        raise ParityError(
            f"parity check failed ({report.tolerance.describe()}): " + "; ".join(report.failures())
        )
