"""DeviceLoader on each device: where every tensor it makes lives, the generator it hands to the
augmentation, reproducible batches, and inputs that arrive pinned or from another device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifarkit.data.loader import DeviceLoader
from cuda_params import DEVICES, cuda_only

N, SIZE = 70, 8


def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (N, 3, SIZE, SIZE), dtype=np.uint8)


def labels() -> np.ndarray:
    return np.arange(N) % 10


class Recorder:
    """An augmentation that records what the loader hands it and adds generator-drawn noise."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, *, generator, epoch, indices):
        self.calls.append({"x": x.device, "generator": generator.device, "indices": indices.device})
        return (x + 0.01 * torch.rand(x.shape, generator=generator, device=x.device)).clamp(0, 1)


def all_batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_the_loader_makes_is_on_its_device(device):
    augment = Recorder()
    loader = DeviceLoader(images(), labels(), batch_size=16, device=device, shuffle=True, augment=augment,
                          dtype=torch.bfloat16, channels_last=True)
    for tensor in (loader.images, loader.labels, loader.mean, loader.std):
        assert tensor.device.type == device
    batches = all_batches(loader)
    assert len(batches) == len(loader) == 5
    for x, y in batches:
        assert x.device.type == y.device.type == device
        assert x.dtype == torch.bfloat16 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
    # The augmentation's inputs, its generator and the dataset indices all live on the loader's device.
    assert {(c["x"].type, c["generator"].type, c["indices"].type) for c in augment.calls} == {(device,) * 3}


@pytest.mark.parametrize("device", DEVICES)
def test_batches_repeat_exactly_and_each_epoch_reshuffles(device):
    loader = DeviceLoader(images(), labels(), batch_size=16, device=device, shuffle=True, augment=Recorder())
    first, again = all_batches(loader), all_batches(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    tail = [(x.clone(), y.clone()) for x, y in loader.iter_from(2)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[2:], tail)) and len(tail) == len(first) - 2
    loader.set_epoch(1)
    other = all_batches(loader)
    assert not torch.equal(first[0][1], other[0][1])          # a new shuffle order
    assert sorted(torch.cat([y for _, y in other]).tolist()) == sorted(labels().tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_unshuffled_batches_match_the_cpu_loader(device):
    cpu = all_batches(DeviceLoader(images(), labels(), batch_size=32))
    here = all_batches(DeviceLoader(images(), labels(), batch_size=32, device=device))
    for (x_cpu, y_cpu), (x, y) in zip(cpu, here):
        assert torch.allclose(x_cpu, x.cpu(), atol=1e-6) and torch.equal(y_cpu, y.cpu())


@cuda_only
def test_pinned_and_gpu_resident_inputs_are_accepted():
    reference = all_batches(DeviceLoader(images(), labels(), batch_size=16, device="cuda"))
    pinned = torch.from_numpy(images()).pin_memory()
    from_pinned = DeviceLoader(pinned, torch.from_numpy(labels()), batch_size=16, device="cuda")
    on_gpu = DeviceLoader(torch.from_numpy(images()).cuda(), torch.from_numpy(labels()).cuda(), batch_size=16,
                          device="cuda")
    back_on_cpu = DeviceLoader(torch.from_numpy(images()).cuda(), torch.from_numpy(labels()).cuda(),
                               batch_size=16, device="cpu")
    assert back_on_cpu.images.device.type == back_on_cpu.labels.device.type == "cpu"
    for other in (from_pinned, on_gpu, back_on_cpu):
        for (x_ref, y_ref), (x, y) in zip(reference, all_batches(other)):
            assert torch.equal(x_ref.cpu(), x.cpu()) and torch.equal(y_ref.cpu(), y.cpu())


@cuda_only
def test_cuda_generators_draw_the_same_stream_on_every_pass():
    """Augmentation randomness on the GPU comes from CUDA generators seeded by position, so two
    loaders with the same seed agree batch for batch, and another seed does not."""
    def noisy(seed):
        return all_batches(DeviceLoader(images(), labels(), batch_size=16, device="cuda", shuffle=True,
                                        augment=Recorder(), seed=seed))
    a, b, c = noisy(3), noisy(3), noisy(4)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
