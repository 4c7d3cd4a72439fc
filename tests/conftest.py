"""Shared fixtures: the offline CIFAR-10 copy (when present) and small synthetic datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests/fakes.py

# Keep the suite light on a 2-core machine; the library itself uses all cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def real_data_dir() -> Path | None:
    env = os.environ.get("CIFARKIT_DATA")
    if env and Path(env).exists():
        return Path(env)
    shared = ROOT.parent / "shared" / "datasets"
    if (shared / "cifar-10-python.tar.gz").is_file():
        return shared
    return None


@pytest.fixture(scope="session")
def real_data():
    path = real_data_dir()
    if path is None:
        pytest.skip("the offline CIFAR-10 copy is not here (set CIFARKIT_DATA)")
    return path


@pytest.fixture(scope="session")
def fake_cifar(tmp_path_factory):
    from fakes import make_fake_cifar
    root = tmp_path_factory.mktemp("fake_cifar")
    return make_fake_cifar(root, "cifar10", n_train=600, n_test=200)
