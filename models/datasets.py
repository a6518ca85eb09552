"""Datasets that need no download: a name → train/validation tensors with a seeded split.

``digits`` is scikit-learn's bundled 8x8 digits. ``shapes32`` (3x32x32 images) and ``waves``
(sequences of shape (T, F)) are generated here from a fixed seed: the machine has no network, so
no CIFAR-style download exists. The generation seed is fixed, so every run sees the same data;
the ``seed`` argument only chooses the train/validation split.
"""

from __future__ import annotations

import functools
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


# A dataset before its split: inputs, integer targets, class labels, description.
_Source = tuple[np.ndarray, np.ndarray, list[str], str]


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


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8), raw intensities 0..16
    return x, bunch.target, tuple(str(int(t)) for t in bunch.target_names)


def _digits() -> _Source:
    x, target, labels = _digits_arrays()
    return (
        x,
        target,
        list(labels),
        "scikit-learn load_digits: 8x8 grey digits, pixel intensities 0..16",
    )


SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond")
SHAPES32_SIZE = 32
_SHAPES32_COUNT = 3000
_GENERATION_SEED = 20_240_611


@functools.lru_cache(maxsize=1)
def _shapes32_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(3000, 3, 32, 32) float32 pixels in [0, 1] and (3000,) shape classes, always the same."""
    rng = np.random.default_rng(_GENERATION_SEED)
    n, size = _SHAPES32_COUNT, SHAPES32_SIZE
    y = rng.permutation(np.arange(n) % len(SHAPES))
    cy, cx = rng.uniform(11, 21, (2, n)).astype(np.float32)
    r = rng.uniform(6, 10, n).astype(np.float32)[:, None, None]  # (n, 1, 1)
    grid = np.arange(size, dtype=np.float32) + 0.5
    dy = grid[None, :, None] - cy[:, None, None]  # (n, size, 1)
    dx = grid[None, None, :] - cx[:, None, None]  # (n, 1, size)
    ady, adx = np.abs(dy), np.abs(dx)
    dist = np.hypot(dx, dy)  # (n, size, size)
    masks = np.stack(
        [
            dist <= r,  # disk
            np.maximum(ady, adx) <= r * 0.75,  # square
            (dy <= r * 0.6) & (dy >= -r) & (adx <= (dy + r) * 0.55),  # triangle
            (dist <= r) & (dist >= r * 0.55),  # ring
            ((ady <= r * 0.28) & (adx <= r)) | ((adx <= r * 0.28) & (ady <= r)),  # cross
            ady + adx <= r,  # diamond
        ]
    )  # (classes, n, size, size)
    mask = masks[y, np.arange(n)]  # (n, size, size)
    dark = rng.uniform(0.0, 0.35, (n, 3)).astype(np.float32)
    light = rng.uniform(0.65, 1.0, (n, 3)).astype(np.float32)
    swap = (rng.random(n) < 0.5)[:, None]  # half dark shapes on light ground, half the reverse
    fg, bg = np.where(swap, dark, light), np.where(swap, light, dark)
    image = np.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None])
    image = image + rng.normal(0.0, 0.06, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32), y.astype(np.int64)


def _shapes32() -> _Source:
    x, y = _shapes32_arrays()
    description = (
        "generated 3x32x32 RGB images of one shape each (disk, square, triangle, ring, "
        "cross, diamond) on a contrasting ground with noise; pixel values 0..1"
    )
    return x, y, list(SHAPES), description


WAVE_FREQUENCIES = (1, 2, 3, 5)
WAVES_STEPS, WAVES_FEATURES = 32, 4
_WAVES_COUNT = 2000


@functools.lru_cache(maxsize=1)
def _waves_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(2000, 32, 4) float32 sequences (N, T, F) and (2000,) frequency classes."""
    rng = np.random.default_rng(_GENERATION_SEED + 1)
    n, steps, features = _WAVES_COUNT, WAVES_STEPS, WAVES_FEATURES
    y = rng.permutation(np.arange(n) % len(WAVE_FREQUENCIES))
    cycles = np.asarray(WAVE_FREQUENCIES, dtype=np.float32)[y][:, None, None]  # (n, 1, 1)
    t = np.arange(steps, dtype=np.float32)[None, :, None] / steps  # (1, T, 1)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, features)).astype(np.float32)
    gain = rng.uniform(0.5, 3.0, (n, 1, features)).astype(np.float32)
    offset = rng.uniform(-2.0, 2.0, (n, 1, features)).astype(np.float32)
    signal = gain * np.sin(2 * np.pi * cycles * t + phase) + offset  # (n, T, F)
    noise = rng.normal(0.0, 0.3, signal.shape).astype(np.float32)
    return (signal + noise).astype(np.float32), y.astype(np.int64)


def _waves() -> _Source:
    x, y = _waves_arrays()
    description = (
        f"generated sequences (T={WAVES_STEPS}, F={WAVES_FEATURES}): noisy sine waves whose "
        "number of cycles is the class, each feature with its own phase, gain and offset"
    )
    return x, y, [f"{c}_cycles" for c in WAVE_FREQUENCIES], description


_DATASETS: dict[str, Callable[[], _Source]] = {
    "digits": _digits,
    "shapes32": _shapes32,
    "waves": _waves,
}


def load_dataset(name: str, *, seed: int = 0, val_fraction: float = 0.2) -> Dataset:
    """Load ``name`` and split it reproducibly: the same seed gives the same split."""
    try:
        source = _DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"dataset {name!r} is unknown; expected one of {sorted(_DATASETS)}"
        ) from None
    x, y, labels, description = source()
    x_train, y_train, x_val, y_val = _split(x, y, seed, val_fraction)
    return Dataset(name, x_train, y_train, x_val, y_val, labels, description)
