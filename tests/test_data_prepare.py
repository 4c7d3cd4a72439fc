import numpy as np

from cifarkit.config import DataConfig
from cifarkit.data.prepare import prepare_data


def test_split_subset_and_statistics(fake_cifar):
    full = prepare_data(DataConfig(val_size=100, verify=False), fake_cifar, log=lambda m: None)
    assert len(full.train_idx) == 500 and len(full.val_idx) == 100
    assert not set(full.train_idx) & set(full.val_idx)
    sub = prepare_data(DataConfig(val_size=100, train_subset=200, verify=False), fake_cifar, log=lambda m: None)
    assert np.array_equal(sub.val_idx, full.val_idx)                  # validation split unchanged
    assert len(sub.train_idx) == 200 and set(sub.train_idx) <= set(full.train_idx)
    counts = np.bincount(sub.arrays.train_labels[sub.train_idx], minlength=10)
    assert counts.max() - counts.min() <= 1                           # class-balanced
    # A non-standard copy is normalized with the statistics of the images it trains on.
    x = full.arrays.train_images[full.train_idx] / 255.0
    assert np.allclose(full.mean, x.mean(axis=(0, 2, 3)), atol=1e-6)
