"""Test-time augmentation: predict each image from several light views and average.

A view is a transformed copy of a normalized batch (B, 3, H, W) with a weight; the weights of a
mode sum to 1. Views come in the order listed below, each followed by its mirror image. Modes:

- ``"none"``: the batch itself, weight 1.
- ``"flip"``: identity and horizontal flip, 1/2 each.
- ``"flip_translate"``: airbench's six views, {identity, flip} x {no shift, +1 px, -1 px}. Shifts
  are diagonal 1-px translations: the batch is reflect-padded by 1 px and cropped at offset (0, 0)
  (content moves 1 px down and right) or (2, 2) (content moves 1 px up and left). Weights as in
  airbench: the two unshifted views 1/4 each, the four shifted views 1/8 each.
- ``"view8"``: eight views with the weight on the unshifted ones: identity and flip 1/5 each;
  then 1/10 each for {identity, flip} x {2-px diagonal shift down-right, 2-px diagonal shift
  up-left} (reflect padding of 2 px, as above) and {identity, flip} x {centre crop of
  (H-4) x (W-4) resized back to H x W with bilinear interpolation, a ~14 % zoom on CIFAR}.
  The reference system that used 8-view weighted TTA did not publish its views or weights; these
  are our choice.

The prediction loop that applies these views (and selective TTA) is `evaluate.inference.infer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarkit.errors import ConfigError, DataError

TTA_MODES = ("none", "flip", "flip_translate", "view8")


# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------

def hflip(x: Tensor) -> Tensor:
    """Mirror a batch left to right."""
    return x.flip(-1)


def translate_diagonal(x: Tensor, shift: int) -> Tensor:
    """Move the content of a batch `shift` px down and right (negative: up and left).

    The border that comes into view is filled by reflecting the image, as airbench does.
    """
    if shift == 0:
        return x
    pad = abs(shift)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[-2:]
    start = 0 if shift > 0 else 2 * pad
    return padded[..., start:start + h, start:start + w]


def center_zoom(x: Tensor, margin: int) -> Tensor:
    """Crop `margin` px from every side and resize back to the original size (a light zoom in)."""
    h, w = x.shape[-2:]
    crop = x[..., margin:h - margin, margin:w - margin]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def _with_flips(views: list[tuple[Tensor, float]]) -> list[tuple[Tensor, float]]:
    # Each view followed by its mirror image, the weight split evenly between the two.
    out = []
    for view, weight in views:
        out += [(view, weight / 2), (hflip(view), weight / 2)]
    return out


def tta_views(x: Tensor, mode: str) -> list[tuple[Tensor, float]]:
    """The views of batch `x` (B, C, H, W) for a TTA mode, as (view batch, weight) pairs.

    Every view has the shape and memory format of `x`; the weights sum to 1. See the module
    docstring for the exact views of each mode.
    """
    check_mode(mode)
    if x.dim() != 4:
        raise DataError(f"test-time augmentation expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if mode == "none":
        views = [(x, 1.0)]
    elif mode == "flip":
        views = _with_flips([(x, 1.0)])
    elif mode == "flip_translate":
        _check_size(x, minimum=2, mode=mode)  # reflect padding needs a neighbour to mirror
        views = _with_flips([(x, 0.5), (translate_diagonal(x, 1), 0.25), (translate_diagonal(x, -1), 0.25)])
    else:  # view8
        _check_size(x, minimum=5, mode=mode)  # 2-px reflect padding and a 2-px crop margin
        views = _with_flips([
            (x, 0.4),
            (translate_diagonal(x, 2), 0.2),
            (translate_diagonal(x, -2), 0.2),
            (center_zoom(x, 2), 0.2),
        ])
    memory_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    return [(v.contiguous(memory_format=memory_format), w) for v, w in views]


def _is_channels_last(x: Tensor) -> bool:
    # A (B, C, 1, 1) tensor is contiguous in both formats; prefer the ordinary one there.
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def check_mode(mode: str) -> None:
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation mode '{mode}'; choose one of {', '.join(TTA_MODES)}")


def _check_size(x: Tensor, minimum: int, mode: str) -> None:
    if min(x.shape[-2:]) < minimum:
        raise DataError(f"TTA mode '{mode}' needs images of at least {minimum}x{minimum} px, "
                        f"got {x.shape[-2]}x{x.shape[-1]}")
