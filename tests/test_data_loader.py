"""DeviceLoader: correct batches, exact normalization, reproducible shuffling and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.data.loader import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, DeviceLoader,
                                  channel_stats)
from cifarkit.errors import ConfigError, DataError

N = 103


def indexed_images(n: int = N, size: int = 8) -> np.ndarray:
    """Image i carries i in its pixels: channel 0 = i % 256, channel 1 = i // 256, channel 2 = 7."""
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    images[:, 0] = (np.arange(n) % 256)[:, None, None]
    images[:, 1] = (np.arange(n) // 256)[:, None, None]
    images[:, 2] = 7
    return images


def index_of(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """Recover the dataset index from a normalized batch of `indexed_images`."""
    pixels = (x.float() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255
    pixels = pixels.round().long()
    return pixels[:, 0, 0, 0] + 256 * pixels[:, 1, 0, 0]


def labels_for(n: int = N) -> np.ndarray:
    return (np.arange(n) * 7 + 3) % 10


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_plain_batches_are_normalized_in_order():
    images = np.random.default_rng(0).integers(0, 256, size=(N, 3, 32, 32), dtype=np.uint8)
    loader = DeviceLoader(images, labels_for(), batch_size=32)
    assert len(loader) == 4 and loader.num_examples == N
    got = batches(loader)
    assert [len(y) for _, y in got] == [32, 32, 32, 7]
    x, y = got[0]
    expected = (torch.from_numpy(images[:32]).double() / 255 - torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and x.shape == (32, 3, 32, 32)
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.tolist() == labels_for()[:32].tolist()
    assert torch.cat([y for _, y in got]).tolist() == labels_for().tolist()


def test_drop_last_and_len():
    loader = DeviceLoader(indexed_images(), labels_for(), batch_size=25, drop_last=True, shuffle=True)
    assert len(loader) == 4 and len(batches(loader)) == 4
    assert len(DeviceLoader(indexed_images(), labels_for(), batch_size=25)) == 5
    assert len(DeviceLoader(indexed_images(100), labels_for(100), batch_size=25, drop_last=True)) == 4


def test_shuffled_epoch_is_a_permutation_with_aligned_labels():
    loader = DeviceLoader(indexed_images(), labels_for(), batch_size=16, shuffle=True, seed=3)
    seen = []
    for x, y in loader:
        idx = index_of(x)
        assert y.tolist() == labels_for()[idx.numpy()].tolist()      # labels travel with their images
        seen.append(idx)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(N)) and order.tolist() != list(range(N))


def test_epochs_reproducible_and_resumable():
    def make(seed=5):
        return DeviceLoader(indexed_images(), labels_for(), batch_size=16, shuffle=True, seed=seed,
                            augment=noise_augment)
    loader = make()
    loader.set_epoch(2)
    first, again = batches(loader), batches(loader)
    assert same(first, again)                                           # same epoch twice: identical
    loader.set_epoch(3)
    assert not same(first, batches(loader))                             # another epoch: different
    resumed = make()
    resumed.set_epoch(2)                                                # a fresh process resuming at epoch 2
    assert same(first, batches(resumed))
    assert same(first[3:], [(x.clone(), y.clone()) for x, y in resumed.iter_from(3)])
    other_seed = make(seed=6)
    other_seed.set_epoch(2)
    assert not same(first, batches(other_seed))


def noise_augment(x01, *, generator, epoch, indices):
    return (x01 + 0.01 * torch.rand(x01.shape, generator=generator, device=x01.device)).clamp(0, 1)


def test_augment_gets_batch_in_unit_range_with_indices_and_epoch():
    calls = []

    def spy(x01, *, generator, epoch, indices):
        calls.append((x01.clone(), epoch, indices.clone(), generator))
        return 1 - x01                                                  # a visible change

    loader = DeviceLoader(indexed_images(), labels_for(), batch_size=50, shuffle=True, augment=spy, seed=1)
    loader.set_epoch(4)
    got = batches(loader)
    assert len(calls) == 3
    for (x01, epoch, indices, generator), (x, _) in zip(calls, got):
        assert x01.dtype == torch.float32 and 0 <= x01.min() and x01.max() <= 1 and epoch == 4
        assert isinstance(generator, torch.Generator)
        assert torch.equal((x01[:, 0, 0, 0] * 255).round().long() + 256 * (x01[:, 1, 0, 0] * 255).round().long(), indices)
        flipped = ((1 - x01) - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        assert torch.allclose(x, flipped, atol=1e-6)                     # normalized after augmenting
    assert len({id(c[3]) for c in calls}) == 3                          # one generator per batch


def test_dtype_channels_last_and_custom_stats():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    loader = DeviceLoader(indexed_images(), labels_for(), batch_size=64, mean=mean, std=std,
                          dtype=torch.bfloat16, channels_last=False)
    x, _ = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous()
    expected = (torch.from_numpy(indexed_images()[:64]).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x.float(), expected, atol=0.05)


def test_tensor_input_is_not_copied_on_cpu():
    images = torch.from_numpy(indexed_images())
    loader = DeviceLoader(images, torch.from_numpy(labels_for()), batch_size=10)
    assert loader.images.data_ptr() == images.data_ptr() and loader.images.dtype == torch.uint8


@pytest.mark.parametrize("images, labels, error, message", [
    (indexed_images().astype(np.float32), labels_for(), DataError, "uint8 \\(N, 3, H, W\\)"),
    (indexed_images()[:, :1], labels_for(), DataError, "uint8 \\(N, 3, H, W\\)"),
    (indexed_images(), labels_for()[:-1], DataError, "102 labels for 103 images"),
    (indexed_images(), labels_for().astype(float), DataError, "1-D integer"),
    ([[1]], labels_for(), DataError, "numpy array or a torch tensor"),
])
def test_bad_inputs(images, labels, error, message):
    with pytest.raises(error, match=message):
        DeviceLoader(images, labels, batch_size=8)


def test_bad_settings():
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        DeviceLoader(indexed_images(), labels_for(), batch_size=0)
    with pytest.raises(ConfigError, match="std > 0"):
        DeviceLoader(indexed_images(), labels_for(), batch_size=8, std=(0.2, 0.0, 0.2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_batches_match_cpu():
    cpu = DeviceLoader(indexed_images(), labels_for(), batch_size=16)
    gpu = DeviceLoader(indexed_images(), labels_for(), batch_size=16, device="cuda", shuffle=True,
                       augment=noise_augment)
    assert gpu.images.device.type == "cuda"
    first, again = batches(gpu), batches(gpu)
    assert same(first, again) and first[0][0].device.type == "cuda"
    shuffled = DeviceLoader(indexed_images(), labels_for(), batch_size=16, device="cuda", shuffle=True)
    order = torch.cat([index_of(x.cpu()) for x, _ in shuffled])
    assert sorted(order.tolist()) == list(range(N))
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(batches(cpu), batches(DeviceLoader(
            indexed_images(), labels_for(), batch_size=16, device="cuda"))):
        assert torch.allclose(x_cpu, x_gpu.cpu(), atol=1e-6) and torch.equal(y_cpu, y_gpu.cpu())


# --- statistics ----------------------------------------------------------------------------------

def test_channel_stats_match_float64_numpy():
    images = np.random.default_rng(0).integers(0, 256, size=(50, 3, 16, 16), dtype=np.uint8)
    mean, std = channel_stats(images)
    as_float = images.astype(np.float64) / 255
    assert np.allclose(mean, as_float.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(std, as_float.std(axis=(0, 2, 3)), atol=1e-12)
    assert channel_stats(torch.from_numpy(images)) == (mean, std)
    with pytest.raises(DataError):
        channel_stats(images.astype(np.float32))


def test_constants_are_the_right_ones():
    assert CIFAR10_STD == (0.24703223, 0.24348513, 0.26158784)
    assert CIFAR10_MEAN == (0.49139968, 0.48215841, 0.44653091)
    assert CIFAR100_MEAN[0] == pytest.approx(0.5071, abs=1e-4) and CIFAR100_STD[0] == pytest.approx(0.2673, abs=1e-4)
