"""The exporter call: what a user reads when torch.onnx.export refuses their model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normserve.export.errors import ExportError
from normserve.export.onnx_export import export_onnx, exporter_reason


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y if int(y.abs().sum().item() * 0) == 0 and bool((y > 0).any()) else -y


def test_the_exporter_s_banner_gives_way_to_its_exception_summary():
    banner = (
        "Failed to decompose the FX graph for ONNX compatibility. \x1b[96mThis is step 2/3"
        "\x1b[0m of exporting the model to ONNX. Next steps:\n- Create an issue\n\n"
        "## Exception summary\n\n<class 'RuntimeError'>: Node meta_weight target meta.weight "
        "references nonexistent attribute weight of meta\n\n(Refer to the full stack trace)"
    )
    assert exporter_reason(RuntimeError(banner)) == (
        "RuntimeError: Node meta_weight target meta.weight references nonexistent attribute "
        "weight of meta"
    )
    assert exporter_reason(ValueError("plain\nsecond line")) == "plain"


def test_a_model_the_exporter_cannot_trace_is_one_line_naming_the_cause():
    with pytest.raises(ExportError) as caught:
        export_onnx(DataDependent().eval(), torch.randn(2, 4))
    message = str(caught.value)
    assert message.startswith("torch.onnx.export failed: ")
    assert "\n" not in message
    assert "Next steps" not in message
    assert "step 2/3" not in message
