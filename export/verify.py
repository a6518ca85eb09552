"""``normserve verify``: re-prove an existing repository entry against its checkpoint.

Checks the entry's hashes, re-audits its graph (checker, no BatchNormalization before or after
ONNX Runtime's optimizations), replays its golden probe, and runs the whole parity proof again
against the eager model rebuilt from the checkpoint. Nothing is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from normserve.export.audit import audit_graph
from normserve.export.comparison import Comparison, Tolerance, compare
from normserve.export.errors import ExportError
from normserve.export.parity import ParityReport, prove_parity, require_parity
from normserve.export.pipeline import build_eval_model, parity_inputs, sha256_file
from normserve.export.sessions import make_session
from normserve.models.checkpoint import load_checkpoint

__all__ = ["VerifyReport", "verify_entry"]

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


@dataclass(frozen=True)
class VerifyReport:
    entry: Path
    parity: ParityReport
    graph: dict[str, Any]
    golden_probe: Comparison | None
    tolerance: Tolerance


def _read_entry(entry: Path) -> tuple[dict[str, Any], bytes]:
    try:
        metadata = json.loads((entry / "model.json").read_text())
        onnx_bytes = (entry / "model.onnx").read_bytes()
    except (OSError, ValueError) as exc:
        raise ExportError(f"{entry} is not a readable repository entry: {exc}") from exc
    if not isinstance(metadata, dict) or not isinstance(metadata.get("export"), dict):
        raise ExportError(f"{entry}/model.json is not a normserve model.json (no 'export')")
    return metadata, onnx_bytes


def _recorded_tolerance(metadata: dict[str, Any]) -> Tolerance:
    parity = metadata["export"].get("parity") or {}
    try:
        return Tolerance(rtol=float(parity["rtol"]), atol=float(parity["atol"]))
    except (KeyError, TypeError, ValueError):
        return Tolerance()


def _replay_probe(
    onnx_bytes: bytes, probe: object, tolerance: Tolerance, entry: Path
) -> Comparison | None:
    """Run the recorded golden probe again; its outputs must match what export recorded."""
    if not isinstance(probe, dict):
        return None
    try:
        (inp,), (out,) = probe["inputs"], probe["outputs"]
        x = np.asarray(inp["data"], dtype=_NUMPY[inp["datatype"]]).reshape(inp["shape"])
        expected = np.asarray(out["data"], dtype=_NUMPY[out["datatype"]]).reshape(out["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{entry}/model.json has a malformed golden_probe: {exc}") from exc
    session = make_session(onnx_bytes, "ORT_ENABLE_ALL")
    (got,) = session.run([out["name"]], {inp["name"]: x})
    result = compare(got, expected, tolerance)
    if not result.ok:
        raise ExportError(
            f"{entry}: the golden probe no longer reproduces (max abs {result.max_abs:.3g})"
        )
    return result


def verify_entry(
    entry: Path, checkpoint_path: Path, tolerance: Tolerance | None = None
) -> VerifyReport:
    """Re-run the export's checks on ``entry``; ``tolerance`` defaults to the recorded one."""
    metadata, onnx_bytes = _read_entry(entry)
    if hashlib.sha256(onnx_bytes).hexdigest() != metadata.get("onnx_sha256"):
        raise ExportError(f"{entry}/model.onnx does not match the onnx_sha256 in model.json")
    recorded = metadata["export"]
    if sha256_file(checkpoint_path) != recorded.get("checkpoint_sha256"):
        raise ExportError(f"{checkpoint_path} is not the checkpoint {entry} was exported from")
    tol = tolerance or _recorded_tolerance(metadata)
    (spec,) = metadata["inputs"]
    checkpoint = load_checkpoint(
        checkpoint_path,
        arch=recorded.get("arch"),
        input_shape=list(spec["shape"][1:]),
        arch_config=recorded.get("arch_config") or {},
    )
    graph = audit_graph(onnx.load_from_string(onnx_bytes))
    probe = _replay_probe(onnx_bytes, metadata.get("golden_probe"), tol, entry)
    model = build_eval_model(checkpoint)
    inputs, kind = parity_inputs(checkpoint)
    report = prove_parity(
        model,
        onnx_bytes,
        inputs,
        input_name=spec["name"],
        tolerance=tol,
        classifier=bool(metadata.get("labels"))
        or (recorded.get("parity") or {}).get("argmax_agreement") is not None,
        inputs_kind=kind,
    )
    require_parity(report)
    return VerifyReport(entry=entry, parity=report, graph=graph, golden_probe=probe, tolerance=tol)
