"""Architectures with normalization layers, their datasets, training and checkpoint format."""

from normserve.models.registry import build_model, list_architectures, register

__all__ = ["build_model", "list_architectures", "register"]
