"""Test-time augmentation: predict each image from several light views and average.

A view is a transformed copy of a normalized batch (B, 3, H, W) with a weight; the weights of a
mode sum to 1; the views are a deterministic function of the batch. In the first four modes the
views come in the order listed below, each followed by its mirror image. Modes:

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
  These are our choice (a light, deterministic 8-view set); ``"views004"`` is reference 004's.
- ``"views000"``: reference 000's six views, 1/6 each (000 averaged the softmax of every model x
  view equally): identity, flip, two intensity scalings, a centre crop resized back, a brightness
  shift (exact values in :mod:`cifarkit.evaluate.reference_views`).
- ``"views004"``: reference 004's eight views, identity 2/9 and the others 1/9 each, with
  softmax(logits / 0.9) (:func:`mode_temperature`): identity, flip, a reflect-padded and an
  edge-padded crop, two rotations, two colour jitters (exact values in
  :mod:`cifarkit.evaluate.reference_views`).

The prediction loop that applies these views (and selective TTA, which `"views004"` does not
allow: its identity view outweighs its flip) is `evaluate.inference.infer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarkit.data.stats import CIFAR10_MEAN, CIFAR10_STD
from cifarkit.errors import ConfigError, DataError
from cifarkit.evaluate import reference_views

TTA_MODES = ("none", "flip", "flip_translate", "view8", "views000", "views004")

# A mode's softmax divides the logits by this (reference 004: softmax(logits / 0.9)); 1 elsewhere.
_TEMPERATURES = {"views004": 0.9}


def mode_temperature(mode: str) -> float:
    """T of a mode: its views' probabilities are softmax(logits / T)."""
    check_mode(mode)
    return _TEMPERATURES.get(mode, 1.0)


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


def tta_views(x: Tensor, mode: str,
              stats: tuple[Sequence[float], Sequence[float]] | None = None) -> list[tuple[Tensor, float]]:
    """The views of normalized batch `x` (B, C, H, W) for a TTA mode, as (view batch, weight) pairs.

    Every view has the shape and memory format of `x`; the weights sum to 1; the views are a
    deterministic function of `x`. `stats` is the (mean, std) `x` was normalized with (default
    CIFAR-10's); only "views004" uses it. See the module docstring for the exact views of each mode.
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
    elif mode == "view8":
        _check_size(x, minimum=5, mode=mode)  # 2-px reflect padding and a 2-px crop margin
        views = _with_flips([
            (x, 0.4),
            (translate_diagonal(x, 2), 0.2),
            (translate_diagonal(x, -2), 0.2),
            (center_zoom(x, 2), 0.2),
        ])
    elif mode == "views000":
        _check_size(x, minimum=2, mode=mode)  # a centre crop of at least one pixel
        views = reference_views.views000(x)
    else:  # views004
        _check_size(x, minimum=reference_views.PAD_004 + 1, mode=mode)  # reflect padding needs more pixels
        views = reference_views.views004(x, stats or (CIFAR10_MEAN, CIFAR10_STD))
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
