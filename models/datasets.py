"""Datasets that need no download: a name → train/validation tensors with a seeded split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from normserve.errors import UserError

__all__ = ["Dataset", "DatasetError", "load_dataset"]


class DatasetError(UserError):
    """Unknown dataset name or bad split parameters."""


@dataclass(frozen=True)
class Dataset:
    """Tensors ready for training: inputs (N, *input_shape) float32, targets (N,) int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    labels: list[str]
    description: str

    @property
    def input_shape(self) -> list[int]:
        """Shape of one sample, without the batch axis."""
        return list(self.x_train.shape[1:])


def _split(
    x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    as_x = lambda idx: torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))  # noqa: E731
    as_y = lambda idx: torch.from_numpy(y[idx].astype(np.int64))  # noqa: E731
    return as_x(train), as_y(train), as_x(val), as_y(val)


def _digits(seed: int, val_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8), raw intensities 0..16
    x_train, y_train, x_val, y_val = _split(x, bunch.target, seed, val_fraction)
    return Dataset(
        name="digits",
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        labels=[str(int(t)) for t in bunch.target_names],
        description="scikit-learn load_digits: 8x8 grey digits, pixel intensities 0..16",
    )


_DATASETS: dict[str, Callable[[int, float], Dataset]] = {"digits": _digits}


def load_dataset(name: str, *, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """Load ``name`` and split it reproducibly: the same seed gives the same split."""
    try:
        loader = _DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"dataset {name!r} is unknown; expected one of {sorted(_DATASETS)}"
        ) from None
    return loader(seed, val_fraction)
