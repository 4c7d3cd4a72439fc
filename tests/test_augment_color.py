"""Batched color kernels and per-image ColorJitter against torchvision with identical parameters."""

import itertools

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cifarkit.augment import color as C
from cifarkit.errors import ConfigError


def images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(max(n, 3), 3, 32, 32, generator=g)
    x[0] = 0.5                                                       # gray: hue and saturation edge cases
    x[1, :, :8] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)        # saturated patch, max == r
    x[2, :, :, :8] = torch.tensor([0.1, 0.1, 0.9]).view(3, 1, 1)     # max == b
    return x[:n]


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("ours,theirs", [
    (C.adjust_brightness, TF.adjust_brightness),
    (C.adjust_contrast, TF.adjust_contrast),
    (C.adjust_saturation, TF.adjust_saturation),
])
def test_blend_kernels_match_torchvision_per_image_factor(ours, theirs):
    x = images()
    factors = torch.rand(16, generator=gen(1)) * 2
    out = ours(x, factors)
    for i in range(16):
        assert (out[i] - theirs(x[i], float(factors[i]))).abs().max() <= 1e-6


def test_hue_matches_torchvision_and_hsv_round_trips():
    x = images()
    shifts = torch.rand(16, generator=gen(2)) - 0.5
    out = C.adjust_hue(x, shifts)
    for i in range(16):
        assert (out[i] - TF.adjust_hue(x[i], float(shifts[i]))).abs().max() <= 1e-6
    assert (C.hsv_to_rgb(C.rgb_to_hsv(x)) - x).abs().max() <= 1e-6


def test_jitter_params_follow_colorjitter_ranges_and_cover_all_orders():
    order, factors = C.jitter_params(6000, 1.5, 0.2, 0.4, 0.1, gen(0), "cpu")
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(6000, 4))
    assert len({tuple(o) for o in order.tolist()}) == 24
    for col, (lo, hi) in enumerate([(0.0, 2.5), (0.8, 1.2), (0.6, 1.4), (-0.1, 0.1)]):
        values = factors[:, col]
        assert values.min() >= lo and values.max() <= hi
        assert values.min() < lo + 0.01 * (hi - lo) and values.max() > hi - 0.01 * (hi - lo)
    _, off = C.jitter_params(100, 0.0, 0.0, 0.3, 0.0, gen(0), "cpu")
    assert torch.all(off[:, :2] == 1) and torch.all(off[:, 3] == 0)


def test_apply_jitter_equals_torchvision_ops_in_each_images_order():
    x = images(24)
    order, factors = C.jitter_params(24, 0.4, 0.4, 0.4, 0.1, gen(3), "cpu")
    order[:6] = torch.tensor(list(itertools.permutations(range(4)))[:6])   # several fixed orders too
    out = C.apply_jitter(x, order, factors)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(24):
        ref = x[i]
        for op in order[i].tolist():
            ref = ops[op](ref, float(factors[i, op]))
        assert (out[i] - ref).abs().max() <= 1e-5


def test_color_jitter_uses_jitter_params_draws():
    x = images(8)
    out = C.color_jitter(x, 0.2, 0.2, 0.2, 0.05, gen(5))
    order, factors = C.jitter_params(8, 0.2, 0.2, 0.2, 0.05, gen(5), "cpu")
    assert torch.equal(out, C.apply_jitter(x, order, factors))


def test_color_jitter_per_image_randomness_and_reproducibility():
    x = images(4)[3:].expand(64, -1, -1, -1).contiguous()
    out = C.color_jitter(x, 0.2, 0.2, 0.2, 0.02, gen(0))
    assert len({tuple(r.tolist()) for r in out.reshape(64, -1)[:, ::11]}) == 64
    assert torch.equal(out, C.color_jitter(x, 0.2, 0.2, 0.2, 0.02, gen(0)))
    assert not torch.equal(out, C.color_jitter(x, 0.2, 0.2, 0.2, 0.02, gen(1)))
    assert out.min() >= 0 and out.max() <= 1


def test_color_jitter_off_is_identity_and_channels_last_is_fine():
    x = images(8)
    assert C.color_jitter(x, 0, 0, 0, 0, gen(0)) is x
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(C.color_jitter(cl, 0.3, 0.3, 0.3, 0.1, gen(1)), C.color_jitter(x, 0.3, 0.3, 0.3, 0.1, gen(1)),
                          atol=1e-6)


def test_color_jitter_rejects_bad_strengths():
    with pytest.raises(ConfigError):
        C.color_jitter(images(2), -0.1, 0, 0, 0, gen(0))
    with pytest.raises(ConfigError):
        C.color_jitter(images(2), 0, 0, 0, 0.6, gen(0))
