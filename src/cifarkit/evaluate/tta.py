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

Selective TTA (``fraction`` < 1; not for ``"views004"``, whose identity outweighs its flip): every
image first gets the two unshifted views (identity and flip); only the ``fraction`` of each batch
whose prediction from those two is least confident (smallest gap between the top two scores) also
gets the remaining views, weighted as above. The
others keep the two-view average. On the speed-run models most images are predicted with a wide
margin that extra views do not overturn, so the shifted views are spent where they can matter.

Two reductions:

- :func:`predict_probs` averages softmax probabilities over views. The evaluation pipeline
  (metrics, calibration, ROC curves, ensembles of checkpoints, submissions) uses this one: averaged
  probabilities are still probabilities and ensemble members combine on the same scale.
- :func:`predict_logits` averages raw logits over views, which is what airbench does; it is there
  for reproducing the speed-run recipes faithfully. Its argmax usually agrees with the probability
  average but not always.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarkit.data.stats import CIFAR10_MEAN, CIFAR10_STD
from cifarkit.errors import ConfigError, DataError
from cifarkit.evaluate import reference_views

TTA_MODES = ("none", "flip", "flip_translate", "view8", "views000", "views004")

# A mode's softmax divides the logits by this (reference 004: softmax(logits / 0.9)); 1 elsewhere.
_TEMPERATURES = {"views004": 0.9}

def mode_temperature(mode: str) -> float:
    """T of a mode: its views' probabilities are softmax(logits / T)."""
    _check_mode(mode)
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
    _check_mode(mode)
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


def _check_mode(mode: str) -> None:
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation mode '{mode}'; choose one of {', '.join(TTA_MODES)}")


def _check_size(x: Tensor, minimum: int, mode: str) -> None:
    if min(x.shape[-2:]) < minimum:
        raise DataError(f"TTA mode '{mode}' needs images of at least {minimum}x{minimum} px, "
                        f"got {x.shape[-2]}x{x.shape[-1]}")


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------

def _batches(data: Tensor | Iterable, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Yield (images, labels or None) from a tensor of images or an iterable of batches."""
    if isinstance(data, Tensor):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size], None
        return
    for batch in data:
        if isinstance(batch, Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
            yield batch[0], labels
        else:
            raise DataError(f"expected batches of images or (images, labels), got {type(batch).__name__}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _predict(
    model: nn.Module,
    data: Tensor | Iterable,
    *,
    mode: str,
    device: str | torch.device,
    autocast_dtype: torch.dtype | None,
    batch_size: int,
    to_score: Callable[[Tensor], Tensor],
    return_labels: bool,
    fraction: float = 1.0,
) -> Tensor | tuple[Tensor, Tensor]:
    _check_mode(mode)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the selective TTA fraction must be in (0, 1], got {fraction}")
    device = torch.device(device)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                if autocast_dtype is not None else contextlib.nullcontext())

    def weighted_sum(views: list[tuple[Tensor, float]]) -> Tensor:
        total = None
        for view, weight in views:
            with autocast:
                out = model(view)
            # Accumulate in float32 whatever precision the forward pass ran in.
            term = to_score(out.float()) * weight
            total = term if total is None else total + term
        return total

    scores, labels = [], []
    with torch.no_grad(), _eval_mode(model):
        for x, y in _batches(data, batch_size):
            x = x.to(device, non_blocking=True)
            if fraction >= 1.0 or mode in ("none", "flip"):   # nothing beyond the unshifted views
                total = weighted_sum(tta_views(x, mode))
            else:
                total = _selective(x, mode, fraction, weighted_sum)
            scores.append(total.cpu())
            if y is not None:
                labels.append(y.cpu())
    if not scores or sum(len(s) for s in scores) == 0:
        raise DataError("there are no images to predict")
    result = torch.cat(scores)
    if not return_labels:
        return result
    if len(labels) != len(scores):
        raise DataError("return_labels needs (images, labels) batches, but the data has no labels")
    return result, torch.cat(labels).long()


def _selective(x: Tensor, mode: str, fraction: float,
               weighted_sum: Callable[[list[tuple[Tensor, float]]], Tensor]) -> Tensor:
    """Two-view scores for every image; the full set of views for the least confident `fraction`.

    Every mode's first two views are the image and its mirror at equal weights, so the two-view
    average is the "flip" mode; the other views are built for the picked images only.
    """
    total = weighted_sum(tta_views(x, "flip"))
    top2 = total.topk(2, dim=-1).values if total.shape[-1] > 1 else torch.cat([total, total], dim=-1)
    margin = top2[:, 0] - top2[:, 1]
    pick = margin.topk(math.ceil(fraction * len(x)), largest=False).indices
    views = tta_views(x[pick], mode)
    unshifted_weight = sum(w for _, w in views[:2])
    total[pick] = total[pick] * unshifted_weight + weighted_sum(views[2:])
    return total


def predict_probs(
    model: nn.Module,
    loader_or_tensor: Tensor | Iterable,
    *,
    mode: str = "none",
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 1000,
    return_labels: bool = False,
    fraction: float = 1.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax probabilities (N, C), float32 on the CPU, averaged over the TTA views by weight.

    `loader_or_tensor` is a tensor of normalized images (split into chunks of `batch_size`) or
    any iterable of (images, labels) batches or image batches. The model must already be on
    `device`; batches are moved there. The model runs in eval mode with gradients off and its
    training flag is restored afterwards. With `autocast_dtype` (e.g. torch.bfloat16) the forward
    passes run under torch.autocast. With `return_labels`, returns (probs, labels) where the
    labels are the batches' labels concatenated (int64, CPU). With `fraction` < 1 the TTA is
    selective (see the module docstring).
    """
    return _predict(model, loader_or_tensor, mode=mode, device=device, autocast_dtype=autocast_dtype,
                    batch_size=batch_size, to_score=lambda z: z.softmax(dim=-1), return_labels=return_labels,
                    fraction=fraction)


def predict_logits(
    model: nn.Module,
    loader_or_tensor: Tensor | Iterable,
    *,
    mode: str = "none",
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 1000,
    return_labels: bool = False,
    fraction: float = 1.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Logits (N, C), float32 on the CPU, averaged over the TTA views by weight (airbench's way).

    Same arguments as :func:`predict_probs`.
    """
    return _predict(model, loader_or_tensor, mode=mode, device=device, autocast_dtype=autocast_dtype,
                    batch_size=batch_size, to_score=lambda z: z, return_labels=return_labels,
                    fraction=fraction)
