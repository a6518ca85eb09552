"""The repository format module: one table, one name rule, one version rule, typed model.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from normserve import model_repository as mr


@pytest.mark.parametrize("datatype", sorted(mr.DATATYPES))
def test_datatype_table_agrees_with_onnx_and_numpy(datatype: str):
    d = mr.DATATYPES[datatype]
    assert onnx.helper.tensor_dtype_to_np_dtype(d.onnx_code) == d.numpy
    assert onnx.TensorProto.DataType.Name(d.onnx_code).lower() in d.onnx
    assert mr.v2_datatype(numpy=d.numpy) == datatype
    assert mr.v2_datatype(onnx=d.onnx) == datatype
    assert mr.v2_datatype(onnx_code=d.onnx_code) == datatype
    assert d.triton == f"TYPE_{datatype}"


def test_ort_type_strings_are_the_ones_onnx_runtime_reports():
    # One graph per datatype through ONNX Runtime: its input type string must be the table's.
    for d in mr.DATATYPES.values():
        x = onnx.helper.make_tensor_value_info("x", d.onnx_code, [1])
        y = onnx.helper.make_tensor_value_info("y", d.onnx_code, [1])
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
        model.ir_version = 9
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        assert session.get_inputs()[0].type == d.onnx


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("digits", True),
        ("a.b-c_1", True),
        ("a..b", False),
        (".hidden", False),
        ("-x", False),
        ("x" * 64, True),
        ("x" * 65, False),
        ("é", False),
        ("a/b", False),
        ("", False),
    ],
)
def test_one_model_name_rule(name: str, ok: bool):
    assert mr.is_model_name(name) is ok
    if not ok:
        with pytest.raises(mr.RepositoryError, match="model name"):
            mr.check_model_name(name)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("1", 1),
        ("0", None),
        ("007", 7),
        ("9" * 18, int("9" * 18)),
        ("1" * 19, None),
        ("\u00b2", None),
        ("\u0661", None),
        ("-1", None),
        ("", None),
        (" 1", None),
    ],
)
def test_one_version_rule(text: str, version: int | None):
    assert mr.parse_version(text) == version


def _config(onnx_bytes: bytes) -> mr.ModelConfig:
    probe = mr.GoldenProbe(
        {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.array([[3], [4]], np.int64)},
        {"y": np.array([[0.5], [-1.25]], np.float32)},
        rtol=1e-3,
        atol=1e-4,
    )
    return mr.ModelConfig(
        name="two-in",
        version=3,
        inputs=(mr.TensorSpec("a", "FP16", (-1, 3)), mr.TensorSpec("b", "INT64", (-1, -1))),
        outputs=(mr.TensorSpec("y", "FP32", (-1, 1)),),
        max_batch_size=16,
        labels=["only"],
        onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        export={"arch": "x:y", "opset": 18},
        golden_probe=probe,
        batching=mr.BatchingOverrides(max_queue_delay_ms=1.5),
    )


def test_model_json_round_trips_through_write_and_read(tmp_path: Path):
    onnx_bytes = b"not really onnx"
    config = _config(onnx_bytes)
    target, version = mr.plan_entry(tmp_path, "two-in", 3, force=False)
    assert (target, version) == (tmp_path / "two-in" / "3", 3)
    mr.write_entry(target, onnx_bytes, config, force=False)
    (entry,) = mr.scan_repository(tmp_path)
    back = mr.read_entry(entry)
    assert back.inputs == config.inputs
    assert back.outputs == config.outputs
    assert back.batching == config.batching
    assert back.export == config.export
    assert back.golden_probe is not None
    for name, array in config.golden_probe.inputs.items():  # type: ignore[union-attr]
        np.testing.assert_array_equal(back.golden_probe.inputs[name], array)
        assert back.golden_probe.inputs[name].dtype == array.dtype
    assert back.golden_probe.mismatch("y", np.array([[0.5], [-1.25]], np.float32)) is None
    assert "differs" in back.golden_probe.mismatch("y", np.array([[0.6], [-1.25]], np.float32))
    assert "shape" in back.golden_probe.mismatch("y", np.zeros((1, 1), np.float32))
    assert mr.next_version(tmp_path / "two-in") == 4
    with pytest.raises(mr.RepositoryError, match="already exists; pass --force"):
        mr.plan_entry(tmp_path, "two-in", 3, force=False)


def test_write_refuses_a_config_whose_hash_is_not_the_bytes(tmp_path: Path):
    with pytest.raises(mr.RepositoryError, match="onnx_sha256"):
        mr.write_entry(tmp_path / "m" / "1", b"other bytes", _config(b"bytes"), force=False)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"format": "normserve.model/2"}, "expected format"),
        ({"inputs": []}, "inputs must be a non-empty list"),
        ({"inputs": [{"name": "a", "datatype": "FP8", "shape": [-1]}]}, "unsupported datatype"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2, 3]}]}, "-1 first"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"name": "a..b"}, "valid model name"),
        ({"dynamic_batching": {"max_batch": 3}}, "unknown key"),
    ],
)
def test_parse_names_the_bad_field(patch: dict, needle: str):
    document = {**_config(b"x").to_json(), **patch}
    with pytest.raises(mr.RepositoryError, match=needle):
        mr.parse_model_json(document, "model.json")
