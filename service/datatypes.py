"""V2 protocol datatype names ↔ numpy dtypes."""

from __future__ import annotations

import numpy as np

__all__ = ["NUMPY_BY_V2", "V2_BY_NUMPY", "V2_BY_ONNX", "to_numpy_dtype"]

NUMPY_BY_V2: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
V2_BY_NUMPY: dict[np.dtype, str] = {v: k for k, v in NUMPY_BY_V2.items()}

# ONNX Runtime's type strings for graph inputs and outputs.
V2_BY_ONNX: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def to_numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype name; ``KeyError`` when unsupported."""
    return NUMPY_BY_V2[datatype]
