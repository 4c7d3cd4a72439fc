"""DeviceLoader: a whole split on the device as one uint8 tensor, served as ready batches.

No DataLoader, no worker processes, no per-image Python: each batch is one gather, one float
conversion, one batched augmentation call and one normalization.

Randomness is a pure function of position: the shuffle order of an epoch comes from a generator
seeded with (seed, "shuffle", epoch) and the augmentation of batch b from one seeded with
(seed, "augment", epoch, b). Iterating an epoch twice gives identical batches, and a run resumed
at any epoch (or batch, via `iter_from`) sees what the uninterrupted run saw.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from cifarkit.data.stats import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, channel_stats
from cifarkit.errors import ConfigError, DataError
from cifarkit.seeding import make_generator

__all__ = ["DeviceLoader", "Augment", "normalize", "to_model_input", "normalized_batches", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN",
           "CIFAR100_STD", "channel_stats"]

# augment(x01, *, generator, epoch, indices) -> x01: float32 (B, 3, H, W) in [0, 1] in and out;
# `indices` are the dataset indices of the batch rows (alternating flips key on them).
Augment = Callable[..., torch.Tensor]


def normalize(x01: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel; mean and std broadcast as (1, C, 1, 1)."""
    return (x01 - mean) / std


class DeviceLoader:
    """One split kept on the device as a single uint8 tensor; yields shuffled, augmented, normalized batches."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                 batch_size: int, device: str | torch.device = "cpu",
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 shuffle: bool = False, drop_last: bool = False, augment: Augment | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = True, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError("mean and std must have 3 entries each, with every std > 0")
        self.device = torch.device(device)
        self.images = _image_tensor(images).to(self.device)      # uint8, moved once
        self.labels = _label_tensor(labels, len(self.images)).to(self.device)
        self.num_examples = len(self.images)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = augment
        self.dtype, self.channels_last, self.seed = dtype, channels_last, seed
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch's batches from `start_batch` on (to resume inside an epoch)."""
        return self.iter_batches(range(start_batch, len(self)))

    def iter_batches(self, numbers: Sequence[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch's batches with these numbers, in the given order (each as the full
        iteration would give it: one rank's share of an evaluation, a resumed epoch)."""
        epoch = self.epoch
        order = self._order(epoch)
        for b in numbers:
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, self.num_examples)
            if order is None:
                indices = torch.arange(lo, hi, device=self.device)
                x, y = self.images[lo:hi], self.labels[lo:hi]    # views: no gather needed
            else:
                indices = order[lo:hi]
                x, y = self.images[indices], self.labels[indices]
            yield self._prepare(x, indices, epoch, b), y

    def _order(self, epoch: int) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        generator = make_generator(self.seed, self.device, "shuffle", epoch)
        return torch.randperm(self.num_examples, generator=generator, device=self.device)

    def plain_images(self, count: int) -> torch.Tensor:
        """The first `count` images of the split as the model sees them, without augmentation
        (what a data-dependent initialization such as FastNet's whitening is computed from)."""
        return to_model_input(self.images[:count], self.mean, self.std, self.dtype, self.channels_last)

    def _prepare(self, x_uint8: torch.Tensor, indices: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        if self.augment is None:
            return to_model_input(x_uint8, self.mean, self.std, self.dtype, self.channels_last)
        x = x_uint8.to(torch.float32).div_(255)
        generator = make_generator(self.seed, self.device, "augment", epoch, batch)
        x = self.augment(x, generator=generator, epoch=epoch, indices=indices)
        return _finish(normalize(x, self.mean, self.std), self.dtype, self.channels_last)


def to_model_input(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype = torch.float32,
                   channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalized float batch in the model's memory format."""
    x = x_uint8.to(torch.float32).div_(255)
    return _finish(normalize(x, mean, std), dtype, channels_last)


def _finish(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=memory_format)


def normalized_batches(images: np.ndarray | torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                       batch_size: int, device: str | torch.device = "cpu",
                       channels_last: bool = True) -> Iterator[torch.Tensor]:
    """Unlabelled uint8 (N, 3, H, W) images as normalized batches on `device`, in order (prediction)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device)
    images = _image_tensor(images)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(device, non_blocking=True)
        yield to_model_input(chunk, mean_t, std_t, channels_last=channels_last)


def _image_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else images.copy())
    if not isinstance(images, torch.Tensor):
        raise DataError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


def _label_tensor(labels: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(np.array(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) != n:
        raise DataError(f"{len(labels)} labels for {n} images")
    return labels.to(torch.int64)
