"""Batched RandomErasing and Cutout against torchvision's erase and RandomErasing.get_params."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomErasing

from cifarkit.augment import erasing as E
from cifarkit.errors import ConfigError

FILL = torch.tensor([0.4914, 0.4822, 0.4465])


def images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_erase_matches_torchvision_erase():
    x = images(4)
    top, left = torch.tensor([0, 5, 20, 3]), torch.tensor([0, 7, 1, 30])
    height, width = torch.tensor([10, 3, 12, 0]), torch.tensor([31, 9, 4, 5])
    out = E.erase(x, top, left, height, width, FILL)
    for i in range(4):
        ref = TF.erase(x[i], int(top[i]), int(left[i]), int(height[i]), int(width[i]), FILL.view(3, 1, 1))
        assert torch.equal(out[i], ref)
    assert torch.equal(out[3], x[3])          # height 0: untouched


def reference_params(u_area, u_ratio, u_pos, scale, ratio, size=32):
    """RandomErasing.get_params's loop, fed with the given uniforms."""
    area, log_ratio = size * size, (math.log(ratio[0]), math.log(ratio[1]))
    for a, r in zip(u_area.tolist(), u_ratio.tolist()):
        erase_area = area * (scale[0] + (scale[1] - scale[0]) * a)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r)
        h, w = int(round(math.sqrt(erase_area * aspect))), int(round(math.sqrt(erase_area / aspect)))
        if h < size and w < size:
            return int(u_pos[0] * (size - h + 1)), int(u_pos[1] * (size - w + 1)), h, w
    return None


@pytest.mark.parametrize("scale,ratio", [((0.02, 0.33), (0.3, 3.3)), ((0.5, 1.0), (0.3, 3.3))])
def test_erasing_params_follow_get_params_loop(scale, ratio):
    n = 400
    top, left, height, width = E.erasing_params(n, (32, 32), scale, ratio, gen(1), "cpu")
    g = gen(1)
    u_area = torch.rand(n, E.ERASING_ATTEMPTS, generator=g, dtype=torch.float64)
    u_ratio = torch.rand(n, E.ERASING_ATTEMPTS, generator=g, dtype=torch.float64)
    u_pos = torch.rand(n, 2, generator=g, dtype=torch.float64)
    for i in range(n):
        expected = reference_params(u_area[i], u_ratio[i], u_pos[i], scale, ratio)
        if expected is None:
            assert height[i] == 0
        else:
            assert (int(top[i]), int(left[i]), int(height[i]), int(width[i])) == expected


@pytest.mark.parametrize("scale,ratio", [((0.02, 0.33), (0.3, 3.3)), ((0.5, 1.0), (0.3, 3.3))])
def test_erasing_box_statistics_agree_with_torchvision(scale, ratio):
    torch.manual_seed(0)
    img = torch.zeros(3, 32, 32)
    tv = [RandomErasing.get_params(img, scale, ratio, [0.0, 0.0, 0.0]) for _ in range(3000)]
    tv_found = torch.tensor([h < 32 for _, _, h, _, _ in tv])
    tv_area = torch.tensor([h * w for _, _, h, w, _ in tv], dtype=torch.float64)[tv_found]
    _, _, height, width = E.erasing_params(3000, (32, 32), scale, ratio, gen(0), "cpu")
    found = height > 0
    area = (height * width).double()[found]
    assert abs(found.double().mean() - tv_found.double().mean()) < 0.04
    assert abs(area.mean() - tv_area.mean()) < 0.06 * tv_area.mean()


def test_random_erasing_probability_fill_and_reproducibility():
    x = images(1).expand(64, -1, -1, -1).contiguous()
    out = E.random_erasing(x, 1.0, (0.02, 0.33), (0.3, 3.3), FILL, gen(0))
    changed = (out != x).flatten(1).any(1)
    assert changed.all()
    painted = (out == FILL.view(1, 3, 1, 1)).all(1)                     # (B, H, W)
    assert torch.equal(painted, (out != x).any(1))
    assert len({tuple(p.flatten().tolist()) for p in painted}) >= 50
    assert torch.equal(out, E.random_erasing(x, 1.0, (0.02, 0.33), (0.3, 3.3), FILL, gen(0)))
    assert not torch.equal(out, E.random_erasing(x, 1.0, (0.02, 0.33), (0.3, 3.3), FILL, gen(1)))
    half = E.random_erasing(images(2000, 1), 0.5, (0.02, 0.33), (0.3, 3.3), FILL, gen(2))
    frac = (half != images(2000, 1)).flatten(1).any(1).float().mean()
    assert 0.45 < frac < 0.55
    assert E.random_erasing(x, 0.0, (0.02, 0.33), (0.3, 3.3), FILL, gen(0)) is x


def test_cutout_squares_are_clipped_and_painted():
    x = images(64)
    size = 12
    out = E.cutout(x, size, FILL, gen(3))
    g = gen(3)
    cy, cx = torch.randint(0, 32, (64,), generator=g), torch.randint(0, 32, (64,), generator=g)
    for i in range(64):
        ref = x[i].clone()
        y0, x0 = max(int(cy[i]) - size // 2, 0), max(int(cx[i]) - size // 2, 0)
        y1, x1 = min(int(cy[i]) - size // 2 + size, 32), min(int(cx[i]) - size // 2 + size, 32)
        ref[:, y0:y1, x0:x1] = FILL.view(3, 1, 1)
        assert torch.equal(out[i], ref)
    copies = images(1).expand(64, -1, -1, -1).contiguous()
    assert len({tuple(r.tolist()) for r in E.cutout(copies, size, FILL, gen(3)).reshape(64, -1)}) >= 50


def test_channels_last_and_bad_parameters():
    x = images(8)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(E.random_erasing(cl, 1.0, (0.02, 0.33), (0.3, 3.3), FILL, gen(0)),
                       E.random_erasing(x, 1.0, (0.02, 0.33), (0.3, 3.3), FILL, gen(0)))
    with pytest.raises(ConfigError):
        E.random_erasing(x, 1.5, (0.02, 0.33), (0.3, 3.3), FILL, gen(0))
    with pytest.raises(ConfigError):
        E.random_erasing(x, 0.5, (0.4, 0.2), (0.3, 3.3), FILL, gen(0))
    with pytest.raises(ConfigError):
        E.cutout(x, -2, FILL, gen(0))
