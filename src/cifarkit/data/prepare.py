"""From a recipe's data section to arrays, a held-out split and the normalization statistics.

Every command comes through here (via `cifarkit.experiment.Experiment`), so they agree on the
split and the normalization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cifarkit.config import DataConfig
from cifarkit.data.cifar import CifarArrays, load_cifar
from cifarkit.data.loader import CIFAR10_MEAN, CIFAR10_STD, channel_stats
from cifarkit.data.splits import stratified_split


@dataclass
class PreparedData:
    arrays: CifarArrays
    train_idx: np.ndarray
    val_idx: np.ndarray
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def classes(self) -> list[str]:
        return list(self.arrays.classes)

    @property
    def num_classes(self) -> int:
        return len(self.arrays.classes)

    def normalization(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "classes": self.classes}


def prepare_data(cfg: DataConfig, data_dir=None, log: Callable[[str], None] = print) -> PreparedData:
    arrays = load_cifar(cfg.dataset, data_dir, download=cfg.download, verify=cfg.verify,
                        label_mode=cfg.label_mode, log=log)
    train_idx, val_idx = stratified_split(arrays.train_labels, cfg.val_size, cfg.split_seed)
    if cfg.train_subset and cfg.train_subset < len(train_idx):
        # Quick experiments: a class-balanced part of the training split (the validation split is unchanged).
        _, keep = stratified_split(arrays.train_labels[train_idx], cfg.train_subset, cfg.split_seed)
        train_idx = train_idx[keep]
    if cfg.dataset == "cifar10" and len(arrays.train_labels) == 50000:
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        # Statistics of the images actually trained on (CIFAR-100, or a non-standard copy).
        mean, std = channel_stats(arrays.train_images[train_idx])
    return PreparedData(arrays, train_idx, val_idx, tuple(mean), tuple(std))
