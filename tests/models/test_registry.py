from __future__ import annotations

import pytest
from torch import nn

from normserve.models.registry import ArchitectureError, build_model, list_architectures


def test_registry_builds_digits_cnn_with_config():
    assert "digits_cnn" in list_architectures()
    model = build_model("digits_cnn", {"hidden": 32})
    assert isinstance(model, nn.Module)
    assert model.head[1].out_features == 32


def test_import_path_architecture():
    model = build_model("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert isinstance(model, nn.Linear)


@pytest.mark.parametrize(
    ("arch", "config", "needle"),
    [
        ("resnet9000", None, "is not registered; expected one of: conv_decoder, digits_cnn"),
        ("no_such_module_xyz:make", None, "cannot import 'no_such_module_xyz'"),
        ("torch.nn:NoSuchThing", None, "has no callable 'NoSuchThing'"),
        ("digits_cnn", {"depth": 3}, "rejected arch_config"),
        ("builtins:dict", {"x": 4}, "returned dict, not nn.Module"),
    ],
)
def test_bad_architectures_are_user_errors(arch, config, needle):
    with pytest.raises(ArchitectureError, match=needle.replace("(", r"\(")):
        build_model(arch, config)
