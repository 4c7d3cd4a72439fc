"""Batched crop / flip / rotation / perspective against torchvision with identical parameters."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode, RandomPerspective
from torchvision.transforms import functional as F1

from cifarkit.augment import geometric as G
from cifarkit.errors import ConfigError


def images(n=8, seed=0, size=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen).float() / 255


def gen(seed):
    return torch.Generator().manual_seed(seed)


def copies(n=64):
    return images(1, seed=3).expand(n, -1, -1, -1).contiguous()


def distinct(x):
    return len({tuple(row.tolist()) for row in x.reshape(x.shape[0], -1)[:, ::7]})


@pytest.mark.parametrize("pad", [1, 4, 16])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_random_crop_matches_torchvision_pad_then_crop(mode, pad):
    x = images(32)
    out = G.random_crop(x, pad, gen(1), mode)
    offsets = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), generator=gen(1))   # replay the draw
    tv_mode = "constant" if mode == "zeros" else "reflect"
    for i in range(x.shape[0]):
        padded = TF.pad(x[i], [pad], padding_mode=tv_mode)
        ref = TF.crop(padded, int(offsets[0, i]), int(offsets[1, i]), 32, 32)
        assert torch.equal(out[i], ref)
    if pad == 16:
        assert (offsets == 0).any() and (offsets == 2 * pad).any()   # the extreme windows were tested


def test_crop_and_translate_kernels():
    x = images(4)
    top, left = torch.tensor([0, 2, 5, 8]), torch.tensor([8, 1, 0, 3])
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    out = G.crop(padded, top, left, 32, 32)
    for i in range(4):
        assert torch.equal(out[i], TF.crop(padded[i], int(top[i]), int(left[i]), 32, 32))
    dx, dy = torch.tensor([3, -2, 0, 31]), torch.tensor([-1, 4, 0, 0])
    moved = G.translate(x, dx, dy)
    for i in range(4):
        ref = TF.affine(x[i], angle=0.0, translate=[int(dx[i]), int(dy[i])], scale=1.0, shear=[0.0, 0.0])
        assert torch.equal(moved[i], ref)


def test_random_flip_matches_horizontal_flip_per_image():
    x = images(16)
    out = G.random_flip(x, gen(2), p=0.5)
    flip = torch.rand(16, generator=gen(2)) < 0.5
    assert 0 < flip.sum() < 16
    for i in range(16):
        assert torch.equal(out[i], TF.horizontal_flip(x[i]) if flip[i] else x[i])
    assert torch.equal(G.random_flip(x, gen(2), p=0.0), x)
    assert torch.equal(G.random_flip(x, gen(2), p=1.0), x.flip(-1))


def test_alternating_flip_flips_each_index_in_exactly_one_of_two_consecutive_epochs():
    n = 512
    x = images(n, seed=5)
    indices = torch.randperm(50_000, generator=gen(0))[:n]
    flipped = []
    for epoch in range(4):
        out = G.alternating_flip(x, epoch, indices, seed=7)
        is_flipped = (out != x).flatten(1).any(1)
        assert torch.equal(out[is_flipped], x[is_flipped].flip(-1))
        flipped.append(is_flipped)
    for a, b in zip(flipped, flipped[1:]):
        assert torch.equal(a, ~b)
    assert 0.4 < flipped[0].float().mean() < 0.6
    # The bit belongs to the dataset index, not to the position in the batch.
    perm = torch.randperm(n, generator=gen(1))
    again = G.alternating_flip(x[perm], 0, indices[perm], seed=7)
    assert torch.equal(again, G.alternating_flip(x, 0, indices, seed=7)[perm])
    assert not torch.equal(G.index_bits(indices, 7), G.index_bits(indices, 8))


def test_alternating_flip_needs_one_index_per_image():
    with pytest.raises(ValueError, match="index"):
        G.alternating_flip(images(4), 0, torch.arange(3), seed=0)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotate_matches_torchvision(interpolation):
    x = images(10)
    angles = torch.tensor([-15.0, -7.3, 0.0, 2.5, 9.99, 15.0, 90.0, -90.0, 180.0, 33.3], dtype=torch.float64)
    mode = InterpolationMode(interpolation)
    for fill in (None, [0.2, 0.5, 0.9]):
        out = G.rotate(x, angles, interpolation, None if fill is None else torch.tensor(fill))
        for i in range(10):
            ref = TF.rotate(x[i], float(angles[i]), interpolation=mode, fill=fill)
            assert (out[i] - ref).abs().max() <= 1e-5, (fill, float(angles[i]))


def test_random_rotation_draws_uniform_angles_per_image():
    x, degrees = images(12), 15.0
    out = G.random_rotation(x, degrees, gen(4))
    u = torch.rand(12, generator=gen(4), dtype=torch.float64)
    angles = -degrees + 2 * degrees * u
    for i in range(12):
        ref = TF.rotate(x[i], float(angles[i]))        # torchvision's RandomRotation default: NEAREST
        assert (out[i] - ref).abs().max() <= 1e-6
    many = torch.rand(20_000, generator=gen(4), dtype=torch.float64) * 2 * degrees - degrees
    assert many.min() >= -degrees and many.max() <= degrees


def test_affine_shear_matches_torchvision_affine():
    x = images(4)
    shear = torch.tensor([10.0, -5.0, 0.0, 16.7], dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    matrix = G.inverse_affine_matrix(zero, zero, zero, shear, -shear / 2, cx=-16.0, cy=-16.0)
    out = G.affine(x, matrix)
    for i in range(4):
        ref = TF.affine(x[i], angle=0.0, translate=[0, 0], scale=1.0,
                        shear=[float(shear[i]), float(-shear[i] / 2)], center=[0, 0])
        assert torch.equal(out[i], ref)


def test_perspective_coefficients_and_warp_match_torchvision():
    start = [[0, 0], [31, 0], [31, 31], [0, 31]]
    ends = [[[3, 2], [29, 1], [30, 28], [1, 30]], [[0, 0], [31, 0], [31, 31], [0, 31]],
            [[5, 5], [26, 3], [28, 29], [2, 27]]]
    x = images(3)
    coeffs = G.perspective_coefficients(torch.tensor([start] * 3), torch.tensor(ends))
    out = G.perspective(x, coeffs)
    for i, end in enumerate(ends):
        ref_coeffs = torch.tensor(F1._get_perspective_coeffs(start, end), dtype=torch.float64)
        assert torch.allclose(coeffs[i], ref_coeffs, atol=1e-6)
        ref = TF.perspective(x[i], start, end)            # RandomPerspective's default: BILINEAR
        assert (out[i] - ref).abs().max() <= 1e-5


def test_random_perspective_replays_as_torchvision_perspective():
    x = images(16)
    out = G.random_perspective(x, 0.5, 0.5, gen(9))
    g = gen(9)
    apply = torch.rand(16, generator=g) < 0.5
    ends = G.perspective_endpoints(16, (32, 32), 0.5, g, "cpu")
    start = G.perspective_startpoints((32, 32)).tolist()
    assert 0 < apply.sum() < 16
    for i in range(16):
        ref = TF.perspective(x[i], start, ends[i].tolist()) if apply[i] else x[i]
        assert (out[i] - ref).abs().max() <= 1e-5


def test_perspective_endpoints_have_torchvision_support():
    torch.manual_seed(0)
    tv = torch.tensor([RandomPerspective.get_params(32, 32, 0.3)[1] for _ in range(3000)])
    ours = G.perspective_endpoints(3000, (32, 32), 0.3, gen(0), "cpu")
    for corner in range(4):
        for axis in range(2):
            assert set(tv[:, corner, axis].tolist()) == set(ours[:, corner, axis].tolist())


@pytest.mark.parametrize("op", [
    lambda x, g: G.random_crop(x, 4, g),
    lambda x, g: G.random_crop(x, 4, g, "reflect"),
    lambda x, g: G.random_rotation(x, 15, g),
    lambda x, g: G.random_perspective(x, 0.3, 1.0, g),
])
def test_per_image_randomness_reproducibility_and_range(op):
    x = copies()
    out = op(x, gen(0))
    assert distinct(out) >= 20
    assert torch.equal(out, op(x, gen(0)))
    assert not torch.equal(out, op(x, gen(1)))
    assert out.min() >= 0 and out.max() <= 1


def test_random_flip_gives_both_orientations_for_copies():
    out = G.random_flip(copies(), gen(0))
    assert distinct(out) == 2


@pytest.mark.parametrize("op", [
    lambda x, g: G.random_crop(x, 4, g, "reflect"),
    lambda x, g: G.random_rotation(x, 15, g, "bilinear"),
    lambda x, g: G.random_perspective(x, 0.3, 1.0, g),
    lambda x, g: G.random_flip(x, g),
])
def test_channels_last_input_gives_same_values(op):
    x = images(8)
    out = op(x.contiguous(memory_format=torch.channels_last), gen(3))
    assert torch.allclose(out, op(x, gen(3)), atol=1e-6)


def test_bad_parameters_raise_config_errors():
    x = images(2)
    with pytest.raises(ConfigError):
        G.random_crop(x, -1, gen(0))
    with pytest.raises(ConfigError):
        G.random_crop(x, 4, gen(0), "wrap")
    with pytest.raises(ConfigError):
        G.random_perspective(x, 1.5, 0.5, gen(0))
    with pytest.raises(ValueError, match="batch"):
        G.random_flip(x[0], gen(0))
