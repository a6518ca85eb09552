"""Checkpoint → folded, frozen, proven ONNX model in a model repository."""
