"""The whole export: census, parity against eager, model.json, and failures that write nothing."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from normserve.export.comparison import Tolerance
from normserve.export.errors import ExportError, ParityError
from normserve.export.from_checkpoint import ExportOptions, run_export
from normserve.export.rebuild import build_eval_model
from normserve.model_repository import RepositoryError
from normserve.models.checkpoint import CheckpointError, load_checkpoint
from normserve.models.datasets import load_dataset

# An independent elementwise check of the bytes (not the proof's rule): a well-behaved float32
# model like these matches eager within it.
RTOL, ATOL = 1e-4, 1e-5


def _entries(repository: Path) -> list[Path]:
    return sorted(p for p in repository.rglob("*") if p.is_file())


def test_export_has_no_batch_norm_and_matches_eager(
    digits_checkpoint: Path, digits_repository: Path
):
    entry = digits_repository / "digits" / "1"
    model = onnx.load(str(entry / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == 2

    eager = build_eval_model(load_checkpoint(digits_checkpoint))
    data = load_dataset("digits", seed=1)
    x = data.x_val[:50]
    session = ort.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = eager(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    assert (got.argmax(1) == data.y_val[:50].numpy()).mean() > 0.8  # a real classifier


def test_model_json_records_the_contract(digits_checkpoint: Path, digits_repository: Path):
    entry = digits_repository / "digits" / "1"
    meta = json.loads((entry / "model.json").read_text())
    assert meta["format"] == "normserve.model/1"
    assert (meta["name"], meta["version"], meta["platform"]) == ("digits", 1, "onnxruntime_onnx")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["labels"] == [str(i) for i in range(10)]
    assert meta["onnx_sha256"] == hashlib.sha256((entry / "model.onnx").read_bytes()).hexdigest()
    report = meta["export"]
    assert report["checkpoint_sha256"] == hashlib.sha256(digits_checkpoint.read_bytes()).hexdigest()
    assert report["normalization"]["folded"] == {"conv2d+bn": 2, "linear+bn": 1}
    assert report["graph"]["onnx_nodes"].get("BatchNormalization", 0) == 0
    assert report["graph"]["ort_optimized_nodes"].get("BatchNormalization", 0) == 0
    assert report["checkpoint"] == {
        "source": "normserve.checkpoint/1",
        "state_dict_key": "state_dict",
        "strip_prefix": "",
        "tensors": len(torch.load(digits_checkpoint, weights_only=True)["state_dict"]),
        "ignored_keys": 0,
    }
    assert report["inputs"] == [{"name": "input", "shape": [1, 8, 8], "dtype": "float32"}]
    assert report["warnings"] == []  # real inputs, trained statistics
    parity = report["parity"]
    assert parity["ok"] is True
    assert parity["tolerance"]["multiple"] == 8.0
    assert parity["tolerance"]["floor"] == 16.0
    assert parity["batch_sizes"] == [1, 2, 7, 33]
    assert parity["random_inputs"] is False
    onnxruntime = parity["checks"]["ONNX Runtime CPU"]
    assert onnxruntime["ok"] is True
    assert set(onnxruntime["comparisons"]) == {"ORT_DISABLE_ALL logits", "ORT_ENABLE_ALL logits"}
    for figures in onnxruntime["comparisons"].values():
        assert 0 < figures["error"] <= figures["bound"]
        assert figures["eager_error"] > 0
    assert parity["checks"]["batch invariance"]["ok"] is True
    assert parity["argmax_agreement"] == 1.0
    assert parity["inputs"] == "validation split of digits"


def test_exported_graph_has_dynamic_batch(digits_repository: Path):
    session = ort.InferenceSession(
        str(digits_repository / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for n in (1, 5, 64):
        (out,) = session.run(None, {"input": np.zeros((n, 1, 8, 8), np.float32)})
        assert out.shape == (n, 10)


def test_second_export_gets_next_version_and_existing_needs_force(
    digits_checkpoint: Path, tmp_path: Path
):
    options = ExportOptions(checkpoint=digits_checkpoint, repository=tmp_path, name="d")
    assert run_export(options).version == 1
    assert run_export(options).version == 2
    with pytest.raises(RepositoryError, match="already exists"):
        run_export(
            ExportOptions(checkpoint=digits_checkpoint, repository=tmp_path, name="d", version=1)
        )
    forced = run_export(
        ExportOptions(
            checkpoint=digits_checkpoint, repository=tmp_path, name="d", version=1, force=True
        )
    )
    assert forced.path == tmp_path / "d" / "1"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["1", "2"]  # nothing left over


def test_parity_failure_writes_nothing(digits_checkpoint: Path, tmp_path: Path):
    # A tolerance no float32 computation can meet: the gate must refuse, and write nothing.
    options = ExportOptions(
        checkpoint=digits_checkpoint,
        repository=tmp_path,
        name="d",
        tolerance=Tolerance(multiple=0.0, floor=0.0),
    )
    with pytest.raises(ParityError, match=r"0 x eager's error \+ 0 eps x scale"):
        run_export(options)
    assert _entries(tmp_path) == []


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable torch file"),
        (b"garbage bytes that are not a zip", "not a readable torch file"),
    ],
)
def test_corrupt_checkpoint_is_refused(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        run_export(ExportOptions(checkpoint=path, repository=tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "normserve.checkpoint/1", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        run_export(ExportOptions(checkpoint=path, repository=tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def test_foreign_and_missing_checkpoints_are_refused(tmp_path: Path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a normserve checkpoint"):
        run_export(ExportOptions(checkpoint=foreign, repository=tmp_path / "repo"))
    with pytest.raises(CheckpointError, match="does not exist"):
        run_export(ExportOptions(checkpoint=tmp_path / "missing.pt", repository=tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def test_state_dict_that_does_not_fit_the_arch_is_refused(digits_checkpoint: Path, tmp_path: Path):
    raw = torch.load(digits_checkpoint, weights_only=True)
    raw["arch_config"] = {"hidden": 32}
    path = tmp_path / "mismatch.pt"
    torch.save(raw, path)
    with pytest.raises(ExportError, match="does not fit arch 'digits_cnn'"):
        run_export(ExportOptions(checkpoint=path, repository=tmp_path / "repo"))
    assert not (tmp_path / "repo").exists()


def test_checkpoint_is_plain_data(digits_checkpoint: Path):
    raw = torch.load(digits_checkpoint, weights_only=True)
    assert raw["format"] == "normserve.checkpoint/1"
    assert raw["arch"] == "digits_cnn"
    assert raw["input"] == {"name": "input", "shape": [1, 8, 8], "dtype": "float32"}
    with pytest.raises(pickle.UnpicklingError):
        torch.load(_write_evil(digits_checkpoint.parent / "evil2.pt"), weights_only=True)


def _write_evil(path: Path) -> Path:
    torch.save({"x": _Evil()}, path)
    return path


def test_golden_probe_reproduces_with_onnx_runtime(digits_repository: Path):
    entry = digits_repository / "digits" / "1"
    meta = json.loads((entry / "model.json").read_text())
    probe = meta["golden_probe"]
    (inp,), (outp,) = probe["inputs"], probe["outputs"]
    assert (inp["name"], inp["datatype"], inp["shape"]) == ("input", "FP32", [2, 1, 8, 8])
    assert (outp["name"], outp["shape"]) == ("logits", [2, 10])
    # The proof's allowance: ORT_ENABLE_ALL's bound on this output; rtol 1e-4 for float32.
    bound = meta["export"]["parity"]["checks"]["ONNX Runtime CPU"]["comparisons"]
    assert probe["atol"] == bound["ORT_ENABLE_ALL logits"]["bound"] > 0
    assert probe["rtol"] == 1e-4
    session = ort.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.array(inp["data"], dtype=np.float32).reshape(inp["shape"])
    assert float(np.abs(x).max()) > 0  # real validation images, not zeros
    (got,) = session.run(None, {"input": x})
    expected = np.array(outp["data"], dtype=np.float32).reshape(outp["shape"])
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


# --- a user's own architecture, bare state dicts, opsets, verify -----------------------------

USER_ARCH = "tests.export.user_models:tiny_net"


@pytest.fixture
def user_state_dict(tmp_path: Path) -> Path:
    from tests.export.user_models import trained_tiny_net

    path = tmp_path / "tiny_state.pt"
    torch.save(trained_tiny_net(width=6, classes=4).state_dict(), path)
    return path


def test_bare_state_dict_of_a_user_architecture_exports_and_verifies(
    user_state_dict: Path, tmp_path: Path
):
    from normserve.export.verify import verify_entry
    from tests.export.user_models import trained_tiny_net

    repository = tmp_path / "repo"
    result = run_export(
        ExportOptions(
            checkpoint=user_state_dict,
            repository=repository,
            arch=USER_ARCH,
            arch_config={"width": 6, "classes": 4},
            input_shape=[3, 8, 8],
        )
    )
    assert result.path == repository / "tiny_state" / "1"  # the file's name
    meta = json.loads((result.path / "model.json").read_text())
    report = meta["export"]
    assert (report["arch"], report["arch_config"]) == (USER_ARCH, {"width": 6, "classes": 4})
    assert report["normalization"]["folded"] == {"bn+conv2d": 1, "conv2d+bn": 1, "linear+bn": 1}
    assert report["parity"]["inputs"] == "random (no sample inputs given)"
    assert report["parity"]["random_inputs"] is True
    assert any("--sample-inputs" in w for w in report["warnings"])  # said loudly
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]

    onnx_path = str(result.path / "model.onnx")
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 8, 8)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = trained_tiny_net(width=6, classes=4)(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)

    # model.json names an import path: verify runs it only when --arch names it too.
    with pytest.raises(ExportError, match=r"an import path: normserve does not run code a file"):
        verify_entry(result.path, user_state_dict)
    verified = verify_entry(result.path, user_state_dict, arch=USER_ARCH)
    assert verified.parity.ok
    assert verified.tolerance == Tolerance()
    assert verified.golden_probe == 0.0  # the same ONNX Runtime replays it exactly


def test_bare_state_dict_needs_arch_and_shape(user_state_dict: Path, tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"pass --arch \S+ and --input-shape"):
        run_export(ExportOptions(checkpoint=user_state_dict, repository=tmp_path / "r"))


def test_state_dict_that_does_not_fit_the_config_is_refused(user_state_dict: Path, tmp_path: Path):
    with pytest.raises(ExportError, match="does not fit"):
        run_export(
            ExportOptions(
                checkpoint=user_state_dict,
                repository=tmp_path / "r",
                arch=USER_ARCH,
                arch_config={"width": 7, "classes": 4},
                input_shape=[3, 8, 8],
            )
        )
    assert not (tmp_path / "r").exists()


def test_pickled_module_is_refused_with_a_way_out(tmp_path: Path):
    from tests.export.user_models import tiny_net

    path = tmp_path / "whole_model.pt"
    torch.save(tiny_net(), path)  # the whole object: needs its class unpickled
    with pytest.raises(CheckpointError, match=r"weights_only=True.*save model\.state_dict\(\)"):
        run_export(ExportOptions(checkpoint=path, repository=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("opset", [16, 24])
def test_unsupported_opset_is_refused(digits_checkpoint: Path, tmp_path: Path, opset: int):
    with pytest.raises(ExportError, match=r"expected 17\.\.23"):
        run_export(ExportOptions(checkpoint=digits_checkpoint, repository=tmp_path, opset=opset))
    assert _entries(tmp_path) == []


def test_verify_refuses_a_tampered_entry(
    digits_checkpoint: Path, digits_repository: Path, tmp_path: Path
):
    import shutil

    from normserve.export.verify import verify_entry

    copy = tmp_path / "copy" / "digits" / "1"
    shutil.copytree(digits_repository / "digits" / "1", copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match=r"does not match model\.json's onnx_sha256"):
        verify_entry(copy, digits_checkpoint)
