"""Per-channel pixel statistics used for normalization (fractions of 255).

CIFAR-10's come from the offline copy's training set (all 50,000 images, population std over every
pixel of a channel) and are checked against the real data in the tests. The std
(0.2023, 0.1994, 0.2010) that circulates in many repositories is wrong (it averages per-image
stds) and is not used anywhere here.

CIFAR-100's are the published values computed the same way (population mean/std over all
50,000 training images); they cannot be checked offline here, so `channel_stats` lets a caller
compute them from whatever training split it actually has.
"""

from __future__ import annotations

import numpy as np
import torch

from cifarkit.errors import DataError

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
CIFAR100_MEAN = (0.50707516, 0.48654887, 0.44091784)
CIFAR100_STD = (0.26733429, 0.25643846, 0.27615047)

DATASET_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}


def channel_stats(images: np.ndarray | torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of uint8 (N, C, H, W) images, in fractions of 255.

    Exact: a 256-bin histogram per channel gives sums and sums of squares without float error
    accumulating over millions of pixels. The std is the population std (ddof=0).
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"channel_stats needs non-empty uint8 (N, C, H, W) images, got "
                         f"{images.dtype} {images.shape}")
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        count = hist.sum()
        mean = (hist @ values) / count
        var = (hist @ (values - mean) ** 2) / count
        means.append(float(mean / 255))
        stds.append(float(np.sqrt(var) / 255))
    return tuple(means), tuple(stds)
