"""Every registry architecture trains, exports with a proof, and serves through the real app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from normserve.export.from_checkpoint import ExportOptions, run_export
from normserve.models.registry import get_architecture, list_architectures
from normserve.models.train import TrainConfig, train_to_file
from normserve.service import Settings, create_app

# What each architecture must fold, freeze and keep (the fold decisions are the product).
EXPECTED = {
    "digits_cnn": ({"conv2d+bn": 2, "linear+bn": 1}, {}),
    "resnet_cifar": ({"conv2d+bn": 9}, {}),
    "mixnorm": ({"conv2d+bn": 1}, {"InstanceNormalization": 2, "LayerNormalization": 1}),
    "seq_tcn": ({"conv1d+bn": 2}, {"LayerNormalization": 2}),
    "conv_decoder": ({"conv2d+bn": 2, "convtranspose2d+bn": 2}, {}),
}


def test_every_registered_architecture_is_covered():
    assert sorted(EXPECTED) == list_architectures()


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_architecture_trains_exports_and_serves(arch: str, tmp_path: Path):
    checkpoint = tmp_path / f"{arch}.pt"
    result = train_to_file(TrainConfig(arch=arch, max_steps=12, seed=3), checkpoint)
    state = result.checkpoint.state_dict
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means
    assert all(float(m.abs().max()) > 0 for m in means)  # statistics were really updated

    repository = tmp_path / "repo"
    exported = run_export(ExportOptions(checkpoint=checkpoint, repository=repository))
    meta = exported.metadata
    norm = meta["export"]["normalization"]
    folded, remaining = EXPECTED[arch]
    assert norm["folded"] == folded
    assert norm["frozen_affine"] == 0
    assert norm["remaining_norm_ops"] == remaining
    assert norm["batch_normalization_nodes"] == {"exported": 0, "ort_optimized": 0}
    parity = meta["export"]["parity"]
    assert parity["ok"] is True
    assert parity["inputs"] == f"validation split of {get_architecture(arch).dataset}"
    task = get_architecture(arch).task
    assert (parity["argmax_agreement"] == 1.0) == (task == "classification")

    settings = Settings(repository=repository, provider="cpu", intra_op_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        shown = client.get(f"/v2/models/{arch}").json()
        assert shown["parameters"]["export"]["normalization"]["folded"] == folded
        assert shown["parameters"]["export"]["parity"]["ok"] is True
        probe = json.loads((exported.path / "model.json").read_text())["golden_probe"]
        response = client.post(f"/v2/models/{arch}/infer", json={"inputs": probe["inputs"]})
        assert response.status_code == 200, response.text
        (out,) = response.json()["outputs"]
        (expected,) = probe["outputs"]
        assert out["shape"] == expected["shape"] == [2, *meta["outputs"][0]["shape"][1:]]
        np.testing.assert_allclose(
            np.asarray(out["data"]), np.asarray(expected["data"]), rtol=1e-4, atol=1e-5
        )
