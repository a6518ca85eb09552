"""``normserve verify``: re-prove an existing repository entry against its checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from export.errors import ExportError
from export.parity import ParityReport, Tolerance, prove_parity, require_parity
from export.pipeline import build_eval_model, parity_inputs, sha256_file
from models.checkpoint import load_checkpoint

__all__ = ["verify_entry"]


def verify_entry(entry: Path, checkpoint_path: Path, tolerance: Tolerance) -> ParityReport:
    """Check the entry's hash and recorded checkpoint, then run the parity proof again."""
    try:
        metadata = json.loads((entry / "model.json").read_text())
        onnx_bytes = (entry / "model.onnx").read_bytes()
    except (OSError, ValueError) as exc:
        raise ExportError(f"{entry} is not a readable repository entry: {exc}") from exc
    if hashlib.sha256(onnx_bytes).hexdigest() != metadata.get("onnx_sha256"):
        raise ExportError(f"{entry}/model.onnx does not match the onnx_sha256 in model.json")
    recorded = metadata.get("export", {})
    if sha256_file(checkpoint_path) != recorded.get("checkpoint_sha256"):
        raise ExportError(f"{checkpoint_path} is not the checkpoint {entry} was exported from")
    checkpoint = load_checkpoint(
        checkpoint_path,
        arch=recorded.get("arch"),
        input_shape=list(metadata["inputs"][0]["shape"][1:]),
    )
    model = build_eval_model(checkpoint)
    inputs, kind = parity_inputs(checkpoint)
    report = prove_parity(
        model,
        onnx_bytes,
        inputs,
        input_name=metadata["inputs"][0]["name"],
        tolerance=tolerance,
        classifier=bool(metadata.get("labels")),
        inputs_kind=kind,
    )
    require_parity(report)
    return report
