"""``normserve verify``: re-prove an existing repository entry against its checkpoint.

Checks the entry's hashes, re-audits its graph (checker, no BatchNormalization before or after
ONNX Runtime's optimizations), replays its golden probe, and runs the whole parity proof again
against the eager model rebuilt from the checkpoint. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from normserve.export.audit import audit_graph
from normserve.export.comparison import Comparison, Tolerance, compare
from normserve.export.errors import ExportError
from normserve.export.parity import ParityReport, prove_parity, require_parity
from normserve.export.rebuild import build_eval_model, parity_inputs, sha256_file
from normserve.export.sessions import make_session
from normserve.model_repository import GoldenProbe, ModelConfig, VersionEntry, read_entry
from normserve.models.checkpoint import load_checkpoint

__all__ = ["VerifyReport", "verify_entry"]


@dataclass(frozen=True)
class VerifyReport:
    entry: Path
    parity: ParityReport
    graph: dict[str, Any]
    golden_probe: Comparison | None
    tolerance: Tolerance


def _recorded_tolerance(config: ModelConfig) -> Tolerance:
    parity = config.export.get("parity") or {}
    try:
        return Tolerance(rtol=float(parity["rtol"]), atol=float(parity["atol"]))
    except (KeyError, TypeError, ValueError):
        return Tolerance()


def _replay_probe(
    onnx_bytes: bytes, probe: GoldenProbe | None, tolerance: Tolerance, entry: Path
) -> Comparison | None:
    """Run the recorded golden probe again; its outputs must match what export recorded."""
    if probe is None:
        return None
    session = make_session(onnx_bytes, "ORT_ENABLE_ALL")
    names = list(probe.outputs)
    worst: Comparison | None = None
    for name, got in zip(names, session.run(names, probe.inputs), strict=True):
        result = compare(got, probe.outputs[name], tolerance)
        if not result.ok:
            raise ExportError(
                f"{entry}: the golden probe no longer reproduces (max abs {result.max_abs:.3g})"
            )
        worst = result if worst is None or result.max_abs > worst.max_abs else worst
    return worst


def verify_entry(
    entry: Path, checkpoint_path: Path, tolerance: Tolerance | None = None
) -> VerifyReport:
    """Re-run the export's checks on ``entry``; ``tolerance`` defaults to the recorded one."""
    version = VersionEntry.at(entry)
    config = read_entry(version)  # format, names and the model.onnx hash
    onnx_bytes = version.onnx_path.read_bytes()
    recorded = config.export
    if not recorded:
        raise ExportError(f"{entry}/model.json is not a normserve export (no 'export' report)")
    if sha256_file(checkpoint_path) != recorded.get("checkpoint_sha256"):
        raise ExportError(f"{checkpoint_path} is not the checkpoint {entry} was exported from")
    tol = tolerance or _recorded_tolerance(config)
    (spec,) = config.inputs
    checkpoint = load_checkpoint(
        checkpoint_path,
        arch=recorded.get("arch"),
        input_shape=list(spec.shape[1:]),
        arch_config=recorded.get("arch_config") or {},
    )
    graph = audit_graph(onnx.load_from_string(onnx_bytes))
    probe = _replay_probe(onnx_bytes, config.golden_probe, tol, entry)
    model = build_eval_model(checkpoint)
    inputs, kind = parity_inputs(checkpoint)
    report = prove_parity(
        model,
        onnx_bytes,
        inputs,
        input_name=spec.name,
        tolerance=tol,
        classifier=bool(config.labels)
        or (recorded.get("parity") or {}).get("argmax_agreement") is not None,
        inputs_kind=kind,
    )
    require_parity(report)
    return VerifyReport(entry=entry, parity=report, graph=graph, golden_probe=probe, tolerance=tol)
