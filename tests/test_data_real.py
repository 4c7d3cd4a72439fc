"""The offline CIFAR-10 copy: verified by content, shaped and balanced as documented."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cifarkit.data.cifar import load_cifar
from cifarkit.data.loader import CIFAR10_MEAN, CIFAR10_STD, channel_stats
from cifarkit.data.splits import stratified_split


def _data_dir() -> Path | None:
    env = os.environ.get("CIFARKIT_DATA")
    if env and Path(env).exists():
        return Path(env)
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return shared if (shared / "cifar-10-python.tar.gz").is_file() else None


pytestmark = [pytest.mark.realdata, pytest.mark.skipif(_data_dir() is None, reason="no offline CIFAR-10 copy")]


@pytest.fixture(scope="module")
def arrays():
    lines = []
    result = load_cifar("cifar10", _data_dir(), download=False, verify=True, log=lines.append)
    assert "content verified" in lines[-1]
    return result


def test_shapes_and_balance(arrays):
    assert arrays.train_images.shape == (50000, 3, 32, 32) and arrays.test_images.shape == (10000, 3, 32, 32)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_images.flags.c_contiguous
    assert np.bincount(arrays.train_labels).tolist() == [5000] * 10
    assert np.bincount(arrays.test_labels).tolist() == [1000] * 10
    assert arrays.classes[0] == "airplane" and arrays.classes[9] == "truck"


def test_channel_statistics_match_the_documented_ones(arrays):
    mean, std = channel_stats(arrays.train_images)
    assert np.allclose(mean, CIFAR10_MEAN, atol=1e-6)
    assert np.allclose(std, CIFAR10_STD, atol=1e-6)
    plain_mean = arrays.train_images.mean(axis=(0, 2, 3)) / 255
    assert np.allclose(plain_mean, CIFAR10_MEAN, atol=1e-6)


def test_standard_validation_split(arrays):
    train_idx, val_idx = stratified_split(arrays.train_labels, 5000, seed=0)
    assert np.bincount(arrays.train_labels[val_idx]).tolist() == [500] * 10
    assert len(train_idx) == 45000
