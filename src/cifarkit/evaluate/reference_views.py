"""The test-time views of two reference systems, as deterministic functions of a normalized batch.

Reference 000 (``"views000"`` in :mod:`cifarkit.evaluate.tta`), six views at 1/6 each, on the
normalized batch as 000 applied them: identity; flip; the batch x 0.975; torchvision's
``center_crop`` to int(0.925 * min(H, W)) px (29 on CIFAR) resized back with bilinear
interpolation (align_corners=False); the batch + 0.05 * sqrt(2 / pi) clamped to [-3, 3]; the
batch x 1.025.

Reference 004 (``"views004"``), eight views, identity 2/9 and the others 1/9, each scored with
softmax(logits / 0.9): identity; flip; a crop of the 4-px reflect-padded image with the content moved
2 px down and right; a crop of the 4-px edge-padded image with the content moved 2 px up and left;
rotations by +2.5 and -5 degrees (NEAREST, black corners); ColorJitter at brightness 1.05,
contrast 1.05, saturation 1.05, hue +0.01; ColorJitter at brightness 0.975, contrast 0.925,
saturation 0.975 (each jitter in torchvision's order brightness, contrast, saturation, hue).
Rotations and jitters act on the [0, 1] image, as 004's PIL transforms did: the batch is
de-normalized with the statistics it was normalized with, transformed, and normalized again.

Both references drew these parameters at random for every prediction (000: scalings
0.95 + 0.1 * U(0, 1), a shift 0.05 * N(0, 1); 004: RandomCrop(32, padding=4), RandomRotation(5)
and (10), ColorJitter(0.1, 0.1, 0.1, 0.02) and (0.05, 0.15, 0.05, 0)). Here each draw is fixed at
the mean distance the original's draw had from the identity (half a uniform range; 20/9 ~ 2 px
for the crop offset; 0.05 * sqrt(2 / pi) for the shift), alternating direction between two views of
one kind, so a prediction is the same in every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from cifarkit.augment import color, geometric

# Reference 000: two intensity scalings (0.95 + 0.1 * U(0, 1)) and a shift 0.05 * N(0, 1), fixed
# at their mean distance from the identity.
SCALES_000 = (0.975, 1.025)
SHIFT_000 = 0.05 * math.sqrt(2 / math.pi)
CROP_FRACTION_000 = 0.925
# Reference 004: RandomCrop(32, padding=4), RandomRotation(5) and (10), two ColorJitters, fixed likewise.
PAD_004, SHIFT_004 = 4, 2
ANGLES_004 = (2.5, -5.0)
JITTERS_004 = ((1.05, 1.05, 1.05, 0.01), (0.975, 0.925, 0.975, 0.0))   # brightness, contrast, saturation, hue


def hflip(x: Tensor) -> Tensor:
    return x.flip(-1)


def padded_crop(x: Tensor, pad: int, top: int, left: int, mode: str) -> Tensor:
    """Pad by `pad` px (`mode` "reflect" or "replicate", torchvision's reflect and edge) and take the
    H x W window at (top, left) of the padded image: (pad, pad) is the identity."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    return padded[..., top:top + h, left:left + w]


def center_crop_resize(x: Tensor, fraction: float) -> Tensor:
    """torchvision's center_crop to int(fraction * min(H, W)) px, resized back bilinearly (reference 000)."""
    h, w = x.shape[-2:]
    crop = TF.center_crop(x, [int(fraction * min(h, w))] * 2)
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def jitter(x01: Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> Tensor:
    """ColorJitter with fixed factors, in torchvision's order brightness, contrast, saturation, hue."""
    out = color.adjust_saturation(color.adjust_contrast(color.adjust_brightness(x01, brightness), contrast),
                                  saturation)
    return color.adjust_hue(out, hue) if hue else out


def views000(x: Tensor) -> list[tuple[Tensor, float]]:
    views = [x, hflip(x), x * SCALES_000[0], center_crop_resize(x, CROP_FRACTION_000),
             (x + SHIFT_000).clamp(-3, 3), x * SCALES_000[1]]
    return [(v, 1 / 6) for v in views]


def views004(x: Tensor, stats: tuple[Sequence[float], Sequence[float]]) -> list[tuple[Tensor, float]]:
    mean = torch.tensor(stats[0], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(stats[1], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x01 = x * std + mean

    def normalized(v01: Tensor) -> Tensor:
        return (v01 - mean) / std

    near, far = PAD_004 - SHIFT_004, PAD_004 + SHIFT_004
    views = [
        (x, 2 / 9),
        (hflip(x), 1 / 9),
        (padded_crop(x, PAD_004, near, near, "reflect"), 1 / 9),     # padding commutes with normalizing
        (padded_crop(x, PAD_004, far, far, "replicate"), 1 / 9),
    ]
    for angle in ANGLES_004:
        angles = torch.full((x.shape[0],), angle, dtype=torch.float64)
        views.append((normalized(geometric.rotate(x01, angles, "nearest")), 1 / 9))
    for factors in JITTERS_004:
        views.append((normalized(jitter(x01, *factors)), 1 / 9))
    return views


__all__ = ["views000", "views004", "padded_crop", "center_crop_resize", "jitter", "SCALES_000", "SHIFT_000",
           "CROP_FRACTION_000", "PAD_004", "SHIFT_004", "ANGLES_004", "JITTERS_004"]
