"""Models to benchmark, made from scratch: every registry architecture, exported for real.

Timings do not depend on weight values, but the numerical differences reported beside them do:
so each architecture gets seeded random weights and *calibrated* BatchNorm statistics (train
mode on a few batches of its dataset, cumulative averages), then randomized BN affine
parameters, and goes through the real ``normserve export`` pipeline (fold, freeze, audit,
parity proof). Nothing is downloaded; nothing is trained to accuracy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normserve.export.from_checkpoint import ExportOptions, run_export
from normserve.export.inputs import checkpoint_inputs
from normserve.export.onnx_export import export_onnx
from normserve.export.rebuild import build_eval_model
from normserve.models.checkpoint import Checkpoint, InputSpec, load_checkpoint, save_checkpoint
from normserve.models.datasets import load_dataset
from normserve.models.registry import build_model, get_architecture, list_architectures

__all__ = [
    "PAYLOAD_ARCH",
    "BenchModel",
    "Workspace",
    "export_unfolded",
    "find_cifar_resnet",
    "payload_probe",
    "synthetic_checkpoint",
]

# A 1x1 conv + BN + global pooling over a 3x224x224 image: a model whose compute is negligible,
# so serving it measures moving a 224x224 payload (DESIGN: import-path architectures).
PAYLOAD_ARCH = "benchmarks.bench_models:payload_probe"
PAYLOAD_SHAPE = [3, 224, 224]


def payload_probe() -> nn.Module:
    """(N, 3, 224, 224) → (N, 8): conv1x1 + BN + ReLU + global average pool."""
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def find_cifar_resnet(names: list[str] | None = None) -> str | None:
    """The registry's CIFAR ResNet (``resnet_cifar`` or the like), if one is registered."""
    names = names if names is not None else list_architectures()
    ranked = [n for n in names if "resnet" in n and "cifar" in n] or [
        n for n in names if "resnet" in n
    ]
    return ranked[0] if ranked else None


def _input_shape(arch: str) -> tuple[list[int], torch.Tensor | None]:
    """Per-sample input shape and some real training inputs when the dataset is known."""
    if arch == PAYLOAD_ARCH:
        return list(PAYLOAD_SHAPE), None
    entry = get_architecture(arch)
    declared = getattr(entry, "input_shape", None)
    data = load_dataset(entry.dataset)
    shape = list(declared) if declared else list(data.input_shape)
    return shape, data.x_train if list(data.input_shape) == shape else None


def synthetic_checkpoint(arch: str, seed: int = 0, calibration_batches: int = 4) -> Checkpoint:
    """Seeded weights, BN statistics calibrated on real inputs, randomized BN affines."""
    torch.manual_seed(seed)
    model = build_model(arch) if arch != PAYLOAD_ARCH else payload_probe()
    shape, real = _input_shape(arch)
    generator = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average over the calibration batches
        bn.reset_running_stats()
    model.train()
    with torch.no_grad():
        for i in range(calibration_batches):
            if real is not None:
                idx = torch.randint(len(real), (64,), generator=generator)
                x = real[idx]
            else:
                x = torch.randn([16 if shape[-1] > 64 else 64, *shape], generator=generator)
            if i == 0 and real is None:
                x = x * 2.0 + 0.5  # statistics that are not mean 0 / var 1
            model(x)
        for bn in bns:
            bn.momentum = 0.1
            if bn.affine:
                bn.weight.uniform_(0.5, 1.5, generator=generator)
                bn.bias.normal_(0.0, 0.1, generator=generator)
    model.eval()
    return Checkpoint.from_state_dict(
        arch=arch,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        inputs=[InputSpec(name="input", shape=list(shape))],
        metrics={"seed": 0, "val_fraction": 0.2, "note": "synthetic benchmark weights"},
    )


def export_unfolded(
    model: nn.Module, sample: torch.Tensor, *, input_name: str, output_name: str, opset: int
) -> bytes:
    """The eval model exported as it is: BatchNormalization nodes kept, no ONNX optimizer.

    What a plain ``torch.onnx.export`` gives a user who does not fold: the baseline that shows
    what folding buys.
    """
    proto = export_onnx(
        model, sample, input_name=input_name, output_name=output_name, opset=opset, optimize=False
    )
    return proto.SerializeToString()


@dataclass
class BenchModel:
    """One architecture, exported into the workspace's repository as ``<name>/1``."""

    arch: str
    name: str
    checkpoint_path: Path
    entry: Path

    @property
    def onnx_path(self) -> Path:
        return self.entry / "model.onnx"

    @cached_property
    def checkpoint(self) -> Checkpoint:
        arch = self.arch if ":" in self.arch else None  # trusted by name, as in export
        return load_checkpoint(self.checkpoint_path, arch=arch)

    @cached_property
    def _parity_inputs(self) -> tuple[torch.Tensor, str]:
        found = checkpoint_inputs(self.checkpoint)
        return found.tensors[0], found.kind

    @property
    def inputs(self) -> torch.Tensor:
        """Real validation inputs when the dataset is known, seeded random ones otherwise."""
        return self._parity_inputs[0]

    @property
    def inputs_kind(self) -> str:
        return self._parity_inputs[1]

    def eval_model(self) -> nn.Module:
        return build_eval_model(self.checkpoint)


class Workspace:
    """Checkpoints and a repository of exports under ``root``, built once and reused."""

    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.repository = root / "exports"
        self._log = log
        self._models: dict[str, BenchModel] = {}

    def model(self, arch: str) -> BenchModel:
        if arch not in self._models:
            name = arch.rsplit(":", 1)[-1]
            checkpoint_path = self.root / "checkpoints" / f"{name}.pt"
            entry = self.repository / name / "1"
            if not (entry / "model.json").exists():
                self._log(f"  exporting {arch} (synthetic weights, calibrated BN)")
                save_checkpoint(synthetic_checkpoint(arch), checkpoint_path)
                run_export(
                    ExportOptions(
                        checkpoint=checkpoint_path,
                        repository=self.repository,
                        name=name,
                        version=1,
                        force=True,
                        # Our own import-path architectures (the payload probe): trusted by name,
                        # as export requires for any arch that is not in the registry.
                        arch=arch if ":" in arch else None,
                    )
                )
            self._models[arch] = BenchModel(arch, name, checkpoint_path, entry)
        return self._models[arch]

    def repository_of(
        self, label: str, archs: list[str], model_json: dict[str, Any] | None = None
    ) -> Path:
        """A repository holding only these architectures' entries (copies), with ``model_json``
        keys replaced in each ``model.json`` (``model.onnx`` and its hash stay untouched)."""
        target = self.root / "repositories" / label
        if target.exists():
            shutil.rmtree(target)
        for arch in archs:
            model = self.model(arch)
            entry = target / model.name / "1"
            shutil.copytree(model.entry, entry)
            if model_json:
                path = entry / "model.json"
                path.write_text(json.dumps({**json.loads(path.read_text()), **model_json}))
        return target
