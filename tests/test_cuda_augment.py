"""Every augmentation op on each device: outputs stay on the input's device, randomness comes from
the generator it is given (a CUDA generator on the GPU), and on a GPU the ops compute what they
compute on the CPU and, where nothing needs the host, never make the CPU wait for the GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cifarkit.augment import color, erasing, geometric, policies
from cifarkit.augment.pipeline import build_augment, build_mixer
from cifarkit.augment.schedule import resize_size_at
from cifarkit.config import AugmentConfig, builtin_recipe_names, load_recipe
from cifarkit.seeding import make_generator
from cuda_params import DEVICES, cuda_only

MEAN = (0.49139968, 0.48215841, 0.44653091)

# Every random per-image op of cifarkit.augment, as (x, generator, fill on x's device) -> x.
RANDOM_OPS = {
    "crop": lambda x, g, fill: geometric.random_crop(x, 4, g),
    "crop_reflect": lambda x, g, fill: geometric.random_crop(x, 2, g, "reflect"),
    "flip": lambda x, g, fill: geometric.random_flip(x, g),
    "rotation": lambda x, g, fill: geometric.random_rotation(x, 15, g),
    "perspective": lambda x, g, fill: geometric.random_perspective(x, 0.3, 1.0, g),
    "color_jitter": lambda x, g, fill: color.color_jitter(x, 0.4, 0.4, 0.4, 0.1, g),
    "autoaugment": lambda x, g, fill: policies.autoaugment_cifar10(x, g),
    "randaugment": lambda x, g, fill: policies.randaugment(x, 2, 9, g),
    "trivialaugment": lambda x, g, fill: policies.trivialaugment(x, g),
    "erasing": lambda x, g, fill: erasing.random_erasing(x, 1.0, [0.02, 0.33], [0.3, 3.3], fill, g),
    "cutout": lambda x, g, fill: erasing.cutout(x, 8, fill, g),
}
# What an op that needs nothing from the host can do without one device synchronization.
SYNC_FREE_OPS = ("crop", "crop_reflect", "flip", "rotation", "cutout")
# Augmentation settings of the built-in recipes (duplicates removed), and one with every sync-free op.
RECIPE_AUGMENTS = {name: load_recipe(name).augment for name in builtin_recipe_names()}
SYNC_FREE_PIPELINE = AugmentConfig(crop_padding=4, crop_mode="reflect", flip="alternate", rotation=10,
                                   erasing_p=0.5, cutout=8)


def batch(device: str, n: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255).to(device)


def run_op(name: str, x: torch.Tensor, seed: int) -> torch.Tensor:
    return RANDOM_OPS[name](x, make_generator(seed, x.device, "augment"), torch.tensor(MEAN, device=x.device))


def share_off(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of values that differ by more than one 8-bit level."""
    return ((a.float() - b.float()).abs() > 1.0 / 255 + 1e-6).float().mean().item()


@contextlib.contextmanager
def no_host_sync():
    """Any operation that makes the CPU wait for the GPU raises inside this block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_each_op_stays_on_the_device_and_follows_its_generator(name, device):
    x = batch(device)
    out, again, other = run_op(name, x, 1), run_op(name, x, 1), run_op(name, x, 2)
    assert out.device == x.device and out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, again)                     # same seed, same draws
    assert not torch.equal(out, other) and not torch.equal(out, x)


@pytest.mark.parametrize("device", DEVICES)
def test_alternating_flip_keys_on_indices_on_the_device(device):
    x = batch(device, n=16)
    indices = torch.arange(100, 116, device=device)
    even, odd = geometric.alternating_flip(x, 0, indices, seed=0), geometric.alternating_flip(x, 1, indices, seed=0)
    assert even.device == x.device
    flipped = [not torch.equal(even[i], x[i]) for i in range(16)]
    assert any(flipped) and not all(flipped)
    # Every image is mirrored in exactly one of two consecutive epochs.
    assert all(torch.equal(even[i], x[i].flip(-1)) != torch.equal(odd[i], x[i].flip(-1)) for i in range(16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", sorted(RECIPE_AUGMENTS))
def test_every_recipes_pipeline_and_mixer_run_on_the_device(recipe, device):
    cfg = RECIPE_AUGMENTS[recipe]
    augment = build_augment(cfg, MEAN, seed=0)
    x = batch(device, n=32)
    indices = torch.arange(32, device=device)
    if augment is not None:
        runs = [augment(x, generator=make_generator(0, device, "augment", 0, b), epoch=0, indices=indices)
                for b in (0, 0, 1)]
        size = resize_size_at(cfg.resize_schedule, 0) or x.shape[-1]      # fast94 trains epoch 0 at 24x24
        assert runs[0].device == x.device and runs[0].shape == (*x.shape[:2], size, size)
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    mixer = build_mixer(cfg, 10)
    if mixer is not None:
        y = torch.arange(32, device=device) % 10
        mixed, targets = mixer(x, y, 0.0, make_generator(0, device, "mix", 0, 0))
        assert mixed.device == targets.device == x.device
        assert torch.allclose(targets.sum(1), torch.ones(32, device=device))


@cuda_only
def test_given_the_same_parameters_the_gpu_computes_what_the_cpu_computes():
    x = batch("cpu", n=40)
    g = torch.Generator().manual_seed(5)
    top, left = torch.randint(-4, 5, (40,), generator=g), torch.randint(-4, 5, (40,), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    angles = torch.rand(40, generator=g, dtype=torch.float64) * 60 - 30
    order, factors = color.jitter_params(40, 0.4, 0.4, 0.4, 0.1, g, "cpu")
    box = erasing.erasing_params(40, (32, 32), [0.02, 0.33], [0.3, 3.3], g, "cpu")
    ends = geometric.perspective_endpoints(40, (32, 32), 0.3, g, "cpu")
    coeffs = geometric.perspective_coefficients(geometric.perspective_startpoints((32, 32)).expand(40, 4, 2), ends)
    kernels = {
        "crop": lambda v, d: geometric.crop(v, top.to(d), left.to(d), 32, 32),
        "flip": lambda v, d: geometric.flip_where(v, flip.to(d)),
        "rotate": lambda v, d: geometric.rotate(v, angles.to(d)),
        "perspective": lambda v, d: geometric.perspective(v, coeffs.to(d)),
        "jitter": lambda v, d: color.apply_jitter(v, order.to(d), factors.to(d)),
        "erase": lambda v, d: erasing.erase(v, *(t.to(d) for t in box), torch.tensor(MEAN, device=d)),
    }
    table = policies.magnitude_table(31, 32, 32)
    for k, op in enumerate(policies.OPS):
        sign = torch.where(flip, -1.0, 1.0) if op in policies.SIGNED_OPS else torch.ones(40)
        magnitude = torch.full((40,), float(table[k, 9])) * sign
        kernels[op] = lambda v, d, k=k, m=magnitude: policies.run_steps(v, [policies.PolicyStep(
            torch.full((40,), k, device=d), m.to(d), torch.ones(40, dtype=torch.bool, device=d))])
    for name, kernel in kernels.items():
        on_cpu, on_gpu = kernel(x, "cpu"), kernel(x.cuda(), "cuda")
        assert on_gpu.device.type == "cuda", name
        # Nearest-neighbour warps may round a sample point that sits on a pixel edge the other way.
        assert share_off(on_cpu, on_gpu.cpu()) <= 0.005, name


@cuda_only
@pytest.mark.parametrize("name", SYNC_FREE_OPS)
def test_ops_that_need_nothing_from_the_host_never_wait_for_the_gpu(name):
    x, fill = batch("cuda"), torch.tensor(MEAN, device="cuda")
    generator = make_generator(0, "cuda", "augment")
    with no_host_sync():
        RANDOM_OPS[name](x, generator, fill)


@cuda_only
@pytest.mark.parametrize("cfg", [RECIPE_AUGMENTS["fast94"], RECIPE_AUGMENTS["fast96"], SYNC_FREE_PIPELINE],
                         ids=["fast94", "fast96", "crop-flip-rotation-erasing-cutout"])
def test_pipelines_without_policies_prepare_batches_without_waiting_for_the_gpu(cfg):
    """The CPU can then queue the next batch while the GPU still runs the previous step."""
    augment = build_augment(cfg, MEAN, seed=0)
    x, indices = batch("cuda"), torch.arange(48, device="cuda")
    augment(x, generator=make_generator(0, "cuda", "augment", 0, 0), epoch=0, indices=indices)   # first use
    generator = make_generator(0, "cuda", "augment", 0, 1)
    with no_host_sync():
        augment(x, generator=generator, epoch=0, indices=indices)
