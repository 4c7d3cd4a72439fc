"""The test-time views of references 000 and 004 on a known input, against the originals' transforms
(torchvision, with each random parameter at the fixed value cifarkit uses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TV
from torchvision.transforms import InterpolationMode

from cifarkit.config import EvalConfig
from cifarkit.data.stats import CIFAR10_MEAN, CIFAR10_STD
from cifarkit.errors import ConfigError
from cifarkit.evaluate import reference_views as R
from cifarkit.evaluate.tta import TTA_MODES, mode_temperature, tta_views

MEAN = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)


@pytest.fixture
def pixels() -> torch.Tensor:
    """A known batch of [0, 1] images on CIFAR's 8-bit grid."""
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (4, 3, 32, 32), generator=g).float() / 255


def normalized(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN) / STD


def test_views000_are_the_original_views(pixels):
    x = normalized(pixels)
    views = tta_views(x, "views000")
    b, c, h, w = x.shape
    # script.ipynb, predict_with_enhanced_tta(num_tta=5): original, flip, then i = 0..3 cycling through
    # intensity scaling, centre crop + resize, brightness shift.
    crop = TV.center_crop(x, int(0.925 * min(h, w)))
    expected = [
        x,
        torch.flip(x, [3]),
        x * R.SCALES_000[0],
        F.interpolate(crop, (h, w), mode="bilinear", align_corners=False),
        torch.clamp(x + R.SHIFT_000, -3, 3),
        x * R.SCALES_000[1],
    ]
    assert len(views) == 6 and int(0.925 * 32) == 29
    for (view, weight), ref in zip(views, expected):
        torch.testing.assert_close(view, ref)
        assert weight == pytest.approx(1 / 6)         # every model x view counted once
    assert mode_temperature("views000") == 1.0


def test_views000_fixed_values_sit_at_the_mean_size_of_the_original_draws():
    # 0.95 + 0.1 * U(0, 1) is on average 0.025 from 1; |0.05 * N(0, 1)| is on average 0.05 * sqrt(2 / pi).
    assert sorted(R.SCALES_000) == pytest.approx([1 - 0.025, 1 + 0.025])
    assert all(0.95 <= s <= 1.05 for s in R.SCALES_000)
    g = torch.Generator().manual_seed(0)
    assert (0.05 * torch.randn(1_000_000, generator=g)).abs().mean().item() == pytest.approx(R.SHIFT_000, rel=0.01)


def test_views004_are_the_original_views(pixels):
    x = normalized(pixels)
    views = tta_views(x, "views004")
    assert [w for _, w in views] == pytest.approx([2 / 9] + [1 / 9] * 7)
    assert mode_temperature("views004") == 0.9
    # src/data/augmentation.py, advanced_transforms, each random parameter at its fixed value:
    #   RandomCrop(32, padding=4, padding_mode='reflect' / 'edge') at crop offsets (2, 2) and (6, 6),
    #   RandomRotation(5) and (10) at +2.5 and -5 degrees (NEAREST, fill 0),
    #   ColorJitter(0.1, 0.1, 0.1, 0.02) and (0.05, 0.15, 0.05, 0) at half their ranges.
    def jitter(img, b, c, s, hue):
        out = TV.adjust_saturation(TV.adjust_contrast(TV.adjust_brightness(img, b), c), s)
        return TV.adjust_hue(out, hue) if hue else out
    expected_pixels = [
        pixels,
        TV.hflip(pixels),
        TV.crop(TV.pad(pixels, 4, padding_mode="reflect"), 2, 2, 32, 32),
        TV.crop(TV.pad(pixels, 4, padding_mode="edge"), 6, 6, 32, 32),
        TV.rotate(pixels, 2.5, InterpolationMode.NEAREST),
        TV.rotate(pixels, -5.0, InterpolationMode.NEAREST),
        jitter(pixels, 1.05, 1.05, 1.05, 0.01),
        jitter(pixels, 0.975, 0.925, 0.975, 0.0),
    ]
    for i, ((view, _), ref) in enumerate(zip(views, expected_pixels)):
        torch.testing.assert_close(view, normalized(ref), atol=2e-5, rtol=0, msg=f"view {i}")


def test_views004_fixed_values_are_inside_the_original_ranges():
    offsets = [R.PAD_004 - R.SHIFT_004, R.PAD_004 + R.SHIFT_004]
    assert all(0 <= o <= 2 * R.PAD_004 for o in offsets)
    assert abs(R.ANGLES_004[0]) <= 5 and abs(R.ANGLES_004[1]) <= 10
    (b1, c1, s1, h1), (b2, c2, s2, h2) = R.JITTERS_004
    assert all(abs(f - 1) <= 0.1 for f in (b1, c1, s1)) and abs(h1) <= 0.02
    assert abs(b2 - 1) <= 0.05 and abs(c2 - 1) <= 0.15 and abs(s2 - 1) <= 0.05 and h2 == 0


def test_views004_uses_the_stats_the_batch_was_normalized_with(pixels):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = (pixels - 0.5) / 0.25
    rotated = tta_views(x, "views004", stats=(mean, std))[5][0]
    # The corner that rotates into view is black, (0 - mean) / std in these units.
    assert torch.allclose(rotated[:, :, 0, 0], torch.full((4, 3), -2.0))
    default = tta_views(x, "views004")[5][0]
    assert not torch.allclose(default[:, :, 0, 0], torch.full((4, 3), -2.0))


@pytest.mark.parametrize("mode", ["views000", "views004"])
def test_reference_views_are_deterministic(pixels, mode):
    x = normalized(pixels)
    first, second = tta_views(x, mode), tta_views(x.clone(), mode)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, second))


def test_modes_and_temperatures():
    assert {"views000", "views004"} <= set(TTA_MODES)
    assert [mode_temperature(m) for m in ("none", "flip", "flip_translate", "view8")] == [1.0] * 4
    with pytest.raises(ConfigError, match="unknown test-time augmentation mode"):
        mode_temperature("views005")
    assert math.isclose(sum(w for _, w in tta_views(torch.zeros(1, 3, 8, 8), "views004")), 1.0)


def test_selective_tta_is_refused_for_views004():
    with pytest.raises(ConfigError, match="tta_fraction"):
        EvalConfig(tta="views004", tta_fraction=0.5).validate()
    EvalConfig(tta="views000", tta_fraction=0.5).validate()    # identity and flip weigh the same there
