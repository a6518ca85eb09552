"""``normserve verify``: re-prove an existing repository entry against its checkpoint.

Checks the entry's hashes, re-audits its graph (checker, no BatchNormalization before or after
ONNX Runtime's optimizations), replays its golden probe, and runs the whole parity proof again
against the eager model rebuilt from the checkpoint, read the way the export recorded (the
state dict's key and prefix, the inputs with their dtypes and dynamic axes). Nothing is
written.

``model.json`` is data: an architecture it records as an import path
(``package.module:factory``) is code, and verify imports it only when ``--arch`` names that
same path. A copied entry naming ``tempfile:mkdtemp`` (or worse) must not run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from normserve.export.audit import audit_graph
from normserve.export.comparison import Tolerance
from normserve.export.errors import ExportError
from normserve.export.inputs import at_other_sizes, checkpoint_inputs, read_sample_inputs
from normserve.export.parity import (
    BATCH_SIZES,
    ParityReport,
    proof_batches,
    prove_parity,
    require_parity,
)
from normserve.export.rebuild import rebuild, sha256_file
from normserve.export.sessions import make_session
from normserve.model_repository import GoldenProbe, ModelConfig, VersionEntry, read_entry
from normserve.models.checkpoint import InputSpec, load_checkpoint
from normserve.models.checkpoint_files import CheckpointError

__all__ = ["VerifyReport", "verify_entry"]


@dataclass(frozen=True)
class VerifyReport:
    entry: Path
    parity: ParityReport
    graph: dict[str, Any]
    golden_probe: float | None  # largest difference from the recorded outputs, if recorded
    tolerance: Tolerance


def recorded_tolerance(config: ModelConfig) -> Tolerance:
    """The tolerance the export proved with (the default for entries that did not say)."""
    recorded = (config.export.get("parity") or {}).get("tolerance") or {}
    try:
        return Tolerance(multiple=float(recorded["multiple"]), floor=float(recorded["floor"]))
    except (KeyError, TypeError, ValueError):
        return Tolerance()


def _replay_probe(onnx_bytes: bytes, probe: GoldenProbe | None, entry: Path) -> float | None:
    """Run the recorded golden probe again; its outputs must match what export recorded."""
    if probe is None:
        return None
    session = make_session(onnx_bytes, "ORT_ENABLE_ALL")
    names = list(probe.outputs)
    worst = 0.0
    for name, got in zip(names, session.run(names, probe.inputs), strict=True):
        problem = probe.mismatch(name, got)
        if problem is not None:
            raise ExportError(f"{entry}: the golden probe no longer reproduces: {name!r} {problem}")
        diff = np.abs(got.astype(np.float64) - probe.outputs[name].astype(np.float64))
        worst = max(worst, float(diff.max(initial=0.0)))
    return worst


def _trusted_arch(recorded: object, arch: str | None, entry: Path) -> str:
    if not isinstance(recorded, str) or not recorded:
        raise ExportError(f"{entry}/model.json records no architecture to rebuild")
    if arch is not None and arch != recorded:
        raise ExportError(
            f"--arch {arch} is not the architecture {entry} was exported with ({recorded})"
        )
    if ":" in recorded and arch is None:
        raise ExportError(
            f"{entry}/model.json names the architecture {recorded!r}, an import path: normserve "
            f"does not run code a file names; pass --arch {recorded} if you trust it"
        )
    return recorded


def _recorded_inputs(config: ModelConfig, entry: Path) -> list[InputSpec]:
    raw = config.export.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise ExportError(f"{entry}/model.json records no input specs (export.inputs)")
    try:
        return [InputSpec.parse(spec, f"{entry}/model.json export.inputs") for spec in raw]
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc


def verify_entry(
    entry: Path,
    checkpoint_path: Path,
    tolerance: Tolerance | None = None,
    *,
    arch: str | None = None,
    sample_inputs: Path | None = None,
) -> VerifyReport:
    """Re-run the export's checks on ``entry``; ``tolerance`` defaults to the recorded one.

    ``arch``: the architecture, which must be the recorded one; needed when that is an import
    path (model.json never chooses code to run).
    """
    version = VersionEntry.at(entry)
    config = read_entry(version)  # format, names and the model.onnx hash
    onnx_bytes = version.onnx_path.read_bytes()
    recorded = config.export
    if not recorded or "checkpoint_sha256" not in recorded:
        raise ExportError(
            f"{entry}/model.json records no source checkpoint (not a normserve export of a "
            "checkpoint): there is nothing to verify it against"
        )
    if sha256_file(checkpoint_path) != recorded.get("checkpoint_sha256"):
        raise ExportError(f"{checkpoint_path} is not the checkpoint {entry} was exported from")
    trusted = _trusted_arch(recorded.get("arch"), arch, entry)
    tol = tolerance or recorded_tolerance(config)
    reading = recorded.get("checkpoint") or {}
    checkpoint = load_checkpoint(
        checkpoint_path,
        arch=trusted,
        arch_config=recorded.get("arch_config") or {},
        inputs=_recorded_inputs(config, entry),
        state_dict_key=reading.get("state_dict_key"),
        strip_prefix=reading.get("strip_prefix"),
    )
    graph = audit_graph(onnx.load_from_string(onnx_bytes))
    probe = _replay_probe(onnx_bytes, config.golden_probe, entry)
    model, _ = rebuild(checkpoint)
    if sample_inputs is not None:
        proof, _ = read_sample_inputs(sample_inputs, checkpoint.inputs)
    else:
        proof = checkpoint_inputs(checkpoint)
    parity = recorded.get("parity") or {}
    other = at_other_sizes(proof.tensors, checkpoint.inputs)
    batches = proof_batches(model, proof.tensors, BATCH_SIZES, other)
    report = prove_parity(
        model,
        onnx_bytes,
        batches,
        input_names=[spec.name for spec in config.inputs],
        output_names=[spec.name for spec in config.outputs],
        tolerance=tol,
        classifier=bool(config.labels) or parity.get("argmax_agreement") is not None,
        inputs_kind=proof.kind,
        random_inputs=proof.random,
        other_sizes=parity.get("other_sizes") or {},
    )
    require_parity(report)
    return VerifyReport(entry=entry, parity=report, graph=graph, golden_probe=probe, tolerance=tol)
