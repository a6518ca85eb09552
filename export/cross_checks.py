"""Two extra witnesses for the proof, each run where it can and skipped with a reason elsewhere.

- The ONNX reference evaluator (``onnx.reference``): a plain numpy implementation of the ONNX
  operators, independent of ONNX Runtime's kernels and graph rewrites. It is slow, so it runs on
  the small batches only.
- The CUDA execution provider, at both optimization levels, with TF32 off on both sides (ORT's
  ``use_tf32=0``; torch's float32 matmul and cuDNN conv precision set to IEEE), against eager on
  the GPU when torch has CUDA, else against eager on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from normserve.errors import first_line
from normserve.export.comparison import Batch, Check, Tolerance, compare_outputs
from normserve.export.sessions import LEVELS, make_session
from normserve.export.signature import flatten_outputs

__all__ = [
    "REFERENCE_MAX_BATCH",
    "cuda_check",
    "cuda_unavailable_reason",
    "device_check",
    "reference_evaluator_check",
    "reference_unsupported",
    "tf32_disabled",
]

REFERENCE_MAX_BATCH = 7
NAME_REFERENCE = "reference evaluator"
NAME_CUDA = "CUDA"
CUDA = "CUDAExecutionProvider"


def reference_unsupported(model: onnx.ModelProto) -> str | None:
    """Why the reference evaluator cannot be trusted on ``model``, or None.

    ``onnx.reference``'s ConvTranspose slices grouped weights along the wrong axis (it returns
    wrong numbers rather than failing), so grouped transposed convs are out of its reach.
    """
    for node in model.graph.node:
        if node.op_type == "ConvTranspose" and node.domain in ("", "ai.onnx"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group > 1:
                return (
                    f"onnx {onnx.__version__}'s reference ConvTranspose mishandles group={group} "
                    "(ONNX Runtime and eager agree)"
                )
    return None


def reference_evaluator_check(
    model_bytes: bytes,
    batches: list[Batch],
    input_names: list[str],
    output_names: list[str],
    tol: Tolerance,
) -> Check:
    """Run ``onnx.reference.ReferenceEvaluator`` on the batches of at most 7 samples."""
    small = [b for b in batches if b.size <= REFERENCE_MAX_BATCH]
    model = onnx.load_from_string(model_bytes)
    reason = reference_unsupported(model)
    if reason is not None:
        return Check(NAME_REFERENCE, skipped=f"the ONNX reference evaluator is not used: {reason}")
    try:
        evaluator = ReferenceEvaluator(model)
        outputs = [
            [np.asarray(o) for o in evaluator.run(output_names, b.feed(input_names))] for b in small
        ]
    except Exception as exc:  # an operator or attribute the evaluator does not implement
        return Check(
            NAME_REFERENCE,
            skipped=f"the ONNX reference evaluator cannot run this graph: {first_line(exc)}",
        )
    return Check(
        NAME_REFERENCE,
        comparisons=compare_outputs("reference", outputs, small, output_names, tol),
        details={"batch_sizes": [b.size for b in small], "onnx": onnx.__version__},
    )


@contextlib.contextmanager
def tf32_disabled() -> Iterator[None]:
    """Full float32 precision for torch's CUDA matmuls and cuDNN convs; restored afterwards."""
    saved: list[tuple[object, str, object]] = []
    targets: list[tuple[object, str, object]] = []
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None:
        targets = [(matmul, "fp32_precision", "ieee"), (conv, "fp32_precision", "ieee")]
    else:  # older torch
        targets = [(matmul, "allow_tf32", False), (torch.backends.cudnn, "allow_tf32", False)]
    for obj, attr, value in targets:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA cross-check cannot run here, or None when it can."""
    if CUDA not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no {CUDA} (a CPU-only build, or no GPU): "
            "install onnxruntime-gpu on a CUDA machine to run it"
        )
    return None


@torch.no_grad()
def device_check(
    original: nn.Module,
    model_bytes: bytes,
    batches: list[Batch],
    input_names: list[str],
    output_names: list[str],
    tol: Tolerance,
    *,
    providers: list,
    torch_device: str,
) -> Check:
    """ONNX Runtime on ``providers`` against the float64 reference, with eager on
    ``torch_device`` (in the model's dtype) as the yardstick when it is rounder than eager on
    the CPU."""
    sessions = {level: make_session(model_bytes, level, providers) for level in LEVELS}
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    got = sessions["ORT_ENABLE_ALL"].get_providers()[0]
    if got != wanted:
        return Check(
            NAME_CUDA, skipped=f"{wanted} could not start (ONNX Runtime fell back to {got})"
        )
    device_model = copy.deepcopy(original).to(torch_device).eval()
    with tf32_disabled():
        on_device = []
        for batch in batches:
            eager = flatten_outputs(device_model(*(t.to(torch_device) for t in batch.inputs)))
            device_eager = [t.detach().cpu().numpy() for t in eager]
            # The rougher of the two eager runs sets the allowance (kernels differ by device).
            worse = [
                d if np.abs(d - r).max(initial=0) > np.abs(c - r).max(initial=0) else c
                for d, c, r in zip(device_eager, batch.eager, batch.reference, strict=True)
            ]
            on_device.append(Batch(batch.inputs, worse, batch.reference))
        comparisons = {}
        for level, session in sessions.items():
            outputs = [session.run(output_names, b.feed(input_names)) for b in on_device]
            comparisons |= compare_outputs(level, outputs, on_device, output_names, tol)
    return Check(
        NAME_CUDA,
        comparisons=comparisons,
        details={
            "provider": wanted,
            "eager_device": torch_device,
            "tf32": False,
            "batch_sizes": [b.size for b in batches],
        },
    )


def cuda_check(
    original: nn.Module,
    model_bytes: bytes,
    batches: list[Batch],
    input_names: list[str],
    output_names: list[str],
    tol: Tolerance,
) -> Check:
    """The CUDA cross-check, or a skip that says why it could not run."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        return Check(NAME_CUDA, skipped=reason)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    providers = [(CUDA, {"use_tf32": "0"}), "CPUExecutionProvider"]
    return device_check(
        original,
        model_bytes,
        batches,
        input_names,
        output_names,
        tol,
        providers=providers,
        torch_device=device,
    )
