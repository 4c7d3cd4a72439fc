"""The shared synthetic datasets: official layout, and learnable by a tiny model."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from torch import nn

from cifarkit.data.cifar import load_cifar
from cifarkit.data.loader import DeviceLoader, channel_stats
from fakes import make_fake_cifar


def test_layout_matches_the_official_python_version(tmp_path):
    root = make_fake_cifar(tmp_path, n_train=500, n_test=100)
    folder = root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].shape == (100, 3072) and batch[b"data"].dtype == np.uint8
    assert isinstance(batch[b"labels"], list) and all(isinstance(v, int) for v in batch[b"labels"])
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"][0] == b"airplane"
    with open(folder / "data_batch_1", "rb") as f:
        assert set(pickle.load(f, encoding="latin1")) == {b"batch_label", b"labels", b"data", b"filenames"}


def test_cifar100_layout(tmp_path):
    root = make_fake_cifar(tmp_path, "cifar100", n_train=200, n_test=100)
    with open(root / "cifar-100-python" / "train", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert {b"fine_labels", b"coarse_labels", b"data"} <= set(batch)
    with open(root / "cifar-100-python" / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20


def test_same_seed_same_data_and_balanced_classes(tmp_path):
    a = load_cifar("cifar10", make_fake_cifar(tmp_path / "a", seed=4), verify=False, download=False, log=lambda m: None)
    b = load_cifar("cifar10", make_fake_cifar(tmp_path / "b", seed=4), verify=False, download=False, log=lambda m: None)
    assert np.array_equal(a.train_images, b.train_images) and np.array_equal(a.train_labels, b.train_labels)
    assert np.bincount(a.train_labels).tolist() == [50] * 10


def test_a_tiny_model_beats_chance_in_two_epochs(tmp_path):
    arrays = load_cifar("cifar10", make_fake_cifar(tmp_path, n_train=500, n_test=200), verify=False,
                        download=False, log=lambda m: None)
    mean, std = channel_stats(arrays.train_images)
    train = DeviceLoader(arrays.train_images, arrays.train_labels, batch_size=50, shuffle=True, mean=mean, std=std)
    test = DeviceLoader(arrays.test_images, arrays.test_labels, batch_size=200, mean=mean, std=std)
    torch.manual_seed(0)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(2):
        train.set_epoch(epoch)
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        x, y = next(iter(test))
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.5                       # chance is 0.1
