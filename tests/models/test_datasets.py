from __future__ import annotations

import pytest
import torch

from normserve.models.datasets import DatasetError, load_dataset


def test_digits_split_is_seeded_disjoint_and_complete():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    assert a.input_shape == [1, 8, 8]
    assert len(a.x_train) + len(a.x_val) == 1797
    assert len(a.x_val) == round(1797 * 0.2)
    train_rows = {tuple(r.tolist()) for r in a.x_train.flatten(1)}
    overlap = sum(tuple(r.tolist()) in train_rows for r in a.x_val.flatten(1))
    assert overlap < 10  # load_digits holds a few duplicate images; indices are disjoint
    assert a.x_train.dtype == torch.float32
    assert a.y_train.dtype == torch.int64
    assert float(a.x_train.max()) == 16.0  # raw pixel intensities: the model normalizes
    assert a.labels == [str(i) for i in range(10)]


def test_unknown_dataset_and_bad_fraction():
    with pytest.raises(DatasetError, match="unknown"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
