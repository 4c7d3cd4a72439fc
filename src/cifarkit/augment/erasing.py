"""Batched RandomErasing and Cutout: per-image rectangles painted with a fill colour.

`random_erasing` samples boxes exactly as torchvision's RandomErasing.get_params (area fraction
uniform in `scale`, log aspect ratio uniform in log(`ratio`), up to 10 attempts until the box
fits), with all attempts of all images drawn at once. `cutout` is DeVries & Taylor's Cutout: a
square centred on a uniformly drawn pixel, clipped at the borders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cifarkit.augment.geometric import check_batch
from cifarkit.errors import ConfigError

ERASING_ATTEMPTS = 10


def _fill_tensor(fill: Tensor | float | Sequence[float], x: Tensor) -> Tensor:
    """A fill broadcastable to x: 1 value, one per channel, or a whole batch of x's shape (noise)."""
    if isinstance(fill, Tensor) and fill.shape == x.shape:
        return fill.to(dtype=x.dtype, device=x.device)
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if value.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill needs 1 or {x.shape[1]} values, got {value.numel()}")
    return value.expand(x.shape[1]).view(1, -1, 1, 1)


def box_mask(top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: tuple[int, int]) -> Tensor:
    """Bool (B, 1, H, W) mask of the per-image boxes [top, top+height) x [left, left+width)."""
    h, w = size
    rows = torch.arange(h, device=top.device).view(1, h)
    cols = torch.arange(w, device=top.device).view(1, w)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + height).view(-1, 1))
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + width).view(-1, 1))
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def erase(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor,
          fill: Tensor | float | Sequence[float]) -> Tensor:
    """Paint box b of each image with `fill` (one value, per channel, or per pixel as a tensor of
    x's shape); height 0 leaves an image unchanged."""
    check_batch(x, "erase")
    mask = box_mask(top, left, height, width, (x.shape[-2], x.shape[-1]))
    return torch.where(mask, _fill_tensor(fill, x), x)


def erasing_params(batch: int, size: tuple[int, int], scale: Sequence[float], ratio: Sequence[float],
                   generator: torch.Generator, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top, left, height, width) int64 (B,) drawn like RandomErasing.get_params; height 0 = no box found."""
    img_h, img_w = size
    area = img_h * img_w
    u_area = torch.rand(batch, ERASING_ATTEMPTS, generator=generator, device=device, dtype=torch.float64)
    u_ratio = torch.rand(batch, ERASING_ATTEMPTS, generator=generator, device=device, dtype=torch.float64)
    erase_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    # round() is half-to-even in both Python and torch.
    heights = torch.round(torch.sqrt(erase_area * aspect)).long()
    widths = torch.round(torch.sqrt(erase_area / aspect)).long()
    fits = (heights < img_h) & (widths < img_w)
    first = torch.where(fits, torch.arange(ERASING_ATTEMPTS, device=device), ERASING_ATTEMPTS).amin(dim=1)
    found = first < ERASING_ATTEMPTS
    pick = first.clamp(max=ERASING_ATTEMPTS - 1).view(-1, 1)
    height = torch.where(found, heights.gather(1, pick).view(-1), 0)
    width = torch.where(found, widths.gather(1, pick).view(-1), 0)
    u_pos = torch.rand(batch, 2, generator=generator, device=device, dtype=torch.float64)
    top = torch.floor(u_pos[:, 0] * (img_h - height + 1)).long()
    left = torch.floor(u_pos[:, 1] * (img_w - width + 1)).long()
    return top, left, height, width


def random_erasing(x: Tensor, p: float, scale: Sequence[float], ratio: Sequence[float],
                   fill: Tensor | float | Sequence[float], generator: torch.Generator) -> Tensor:
    """RandomErasing(p, scale, ratio, value=fill) with its own coin and box per image."""
    check_batch(x, "random_erasing")
    if not 0 <= p <= 1:
        raise ConfigError(f"erasing probability must be in [0, 1], got {p}")
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"erasing scale must be [low, high] with 0 < low <= high <= 1, got {list(scale)}")
    if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
        raise ConfigError(f"erasing ratio must be [low, high] with 0 < low <= high, got {list(ratio)}")
    if p == 0:
        return x
    b = x.shape[0]
    apply = torch.rand(b, generator=generator, device=x.device) < p
    top, left, height, width = erasing_params(b, (x.shape[-2], x.shape[-1]), scale, ratio, generator, x.device)
    height = torch.where(apply, height, 0)
    return erase(x, top, left, height, width, fill)


def cutout_params(batch: int, size: int, image_size: tuple[int, int], generator: torch.Generator,
                  device: torch.device | str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top, left, height, width) of squares of side `size` centred uniformly, clipped to the image."""
    h, w = image_size
    cy = torch.randint(0, h, (batch,), generator=generator, device=device)
    cx = torch.randint(0, w, (batch,), generator=generator, device=device)
    top, left = (cy - size // 2).clamp(0, h), (cx - size // 2).clamp(0, w)
    bottom, right = (cy - size // 2 + size).clamp(0, h), (cx - size // 2 + size).clamp(0, w)
    return top, left, bottom - top, right - left


def cutout(x: Tensor, size: int, fill: Tensor | float | Sequence[float], generator: torch.Generator) -> Tensor:
    """Cutout: one `size` x `size` square per image (clipped at the borders) painted with `fill`."""
    check_batch(x, "cutout")
    if size < 0:
        raise ConfigError(f"cutout size must be >= 0, got {size}")
    if size == 0:
        return x
    top, left, height, width = cutout_params(x.shape[0], size, (x.shape[-2], x.shape[-1]), generator, x.device)
    return erase(x, top, left, height, width, fill)


__all__ = ["box_mask", "erase", "erasing_params", "random_erasing", "cutout_params", "cutout"]
