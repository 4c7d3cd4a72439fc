"""stratified_split: disjoint, covering, balanced, proportional, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cifarkit.data.splits import stratified_split
from cifarkit.errors import DataError


def cifar_like_labels(per_class: int = 5000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def check_partition(train_idx: np.ndarray, val_idx: np.ndarray, n: int) -> None:
    assert train_idx.dtype == np.int64 and val_idx.dtype == np.int64
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)      # sorted, unique
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(n))


def test_cifar_sized_split_is_500_per_class():
    labels = cifar_like_labels()
    train_idx, val_idx = stratified_split(labels, 5000, seed=0)
    check_partition(train_idx, val_idx, 50000)
    assert np.bincount(labels[val_idx]).tolist() == [500] * 10
    assert np.bincount(labels[train_idx]).tolist() == [4500] * 10


def test_uneven_val_size_differs_by_at_most_one():
    labels = cifar_like_labels(per_class=100)
    _, val_idx = stratified_split(labels, 37, seed=3)
    counts = np.bincount(labels[val_idx], minlength=10)
    assert counts.sum() == 37 and counts.max() - counts.min() <= 1


def test_imbalanced_classes_get_proportional_shares():
    labels = np.repeat(np.arange(3), [600, 300, 100])
    _, val_idx = stratified_split(labels, 100, seed=0)
    assert np.bincount(labels[val_idx]).tolist() == [60, 30, 10]


def test_deterministic_in_seed_and_seed_matters():
    labels = cifar_like_labels(per_class=200)
    a = stratified_split(labels, 300, seed=7)
    b = stratified_split(labels, 300, seed=7)
    c = stratified_split(labels, 300, seed=8)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


def test_zero_val_size_and_errors():
    labels = cifar_like_labels(per_class=10)
    train_idx, val_idx = stratified_split(labels, 0, seed=0)
    assert np.array_equal(train_idx, np.arange(100)) and val_idx.size == 0 and val_idx.dtype == np.int64
    for bad in (100, 101, -1):
        with pytest.raises(DataError, match="val_size must be in \\[0, 100\\)"):
            stratified_split(labels, bad, seed=0)
    with pytest.raises(DataError, match="1-D integer"):
        stratified_split(labels.astype(float), 10, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=300), st.integers(0, 10_000), st.data())
def test_partition_properties_hold_for_any_labels(label_list, seed, data):
    labels = np.array(label_list)
    val_size = data.draw(st.integers(0, len(labels) - 1))
    train_idx, val_idx = stratified_split(labels, val_size, seed)
    check_partition(train_idx, val_idx, len(labels))
    assert len(val_idx) == val_size
    # each class's share is within one of its exact proportional quota
    counts = np.bincount(labels, minlength=7)
    got = np.bincount(labels[val_idx], minlength=7)
    assert np.all(np.abs(got - counts * val_size / len(labels)) < 1 + 1e-9)
