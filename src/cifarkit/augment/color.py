"""Batched color kernels and ColorJitter with per-image factors and a per-image order of ops.

The kernels mirror torchvision.transforms.v2.functional (adjust_brightness / contrast /
saturation / hue) but take one factor per image, a float tensor of shape (B,). `blend` also has
torchvision's uint8 flavour (values 0..255 held in a float tensor, result truncated), which the
AutoAugment-family policies use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cifarkit.augment.geometric import check_batch
from cifarkit.errors import ConfigError


def _per_image(factor: Tensor | float, x: Tensor) -> Tensor:
    """A factor as a (B, 1, 1, 1) tensor in x's dtype, from a scalar or a (B,) tensor."""
    return torch.as_tensor(factor, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601-2 luma (torchvision's weights): (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = x.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def blend(x: Tensor, other: Tensor, factor: Tensor | float, bound: float = 1.0, truncate: bool = False) -> Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, bound]; truncate mimics a uint8 cast."""
    f = _per_image(factor, x)
    out = (x * f + other * (1.0 - f)).clamp_(0.0, bound)
    return out.trunc_() if truncate else out


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    return (x * _per_image(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    return blend(x, grayscale(x), factor)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """Batched RGB -> HSV in [0, 1], the same formulas as torchvision (from Pillow)."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    equal = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(equal, ones, maxc)
    chroma_safe = torch.where(equal, ones, chroma)
    rc, gc, bc = (maxc - r) / chroma_safe, (maxc - g) / chroma_safe, (maxc - b) / chroma_safe
    max_is_r = maxc == r
    max_is_g = (maxc == g) & ~max_is_r
    max_is_b = ~max_is_r & ~max_is_g
    h = (bc - gc) * max_is_r + (2.0 + rc - bc) * max_is_g + (4.0 + gc - rc) * max_is_b
    h = torch.fmod(h * (1.0 / 6.0) + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Batched HSV -> RGB, the inverse of `rgb_to_hsv` (torchvision's sector table)."""
    h, s, v = hsv.unbind(dim=1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.int64).remainder_(6)
    p = ((1.0 - s) * v).clamp_(0.0, 1.0)
    q = ((1.0 - s * f) * v).clamp_(0.0, 1.0)
    t = ((s * f + (1.0 - s)) * v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)                                   # (B, 4, H, W)
    table = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=hsv.device)
    select = table[:, sector].movedim(0, 1)                                    # (B, 3, H, W)
    return vpqt.gather(1, select)


def adjust_hue(x: Tensor, factor: Tensor | float) -> Tensor:
    """Rotate hue by factor (in [-0.5, 0.5]) per image."""
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + _per_image(factor, x).view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


def _factor_range(strength: float, name: str) -> tuple[float, float] | None:
    """ColorJitter's range [max(0, 1 - s), 1 + s]; None when the op is off."""
    if strength < 0:
        raise ConfigError(f"color jitter {name} must be >= 0, got {strength}")
    return None if strength == 0 else (max(0.0, 1.0 - strength), 1.0 + strength)


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def jitter_params(batch: int, brightness: float, contrast: float, saturation: float, hue: float,
                  generator: torch.Generator, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Per-image ColorJitter parameters: (order int64 (B, 4), factors float32 (B, 4)).

    order[i] is a uniform random permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE);
    factors[i] holds brightness/contrast/saturation factors uniform in [max(0, 1 - s), 1 + s]
    (1, the identity, for a disabled op) and a hue shift uniform in [-hue, hue].
    """
    if not 0 <= hue <= 0.5:
        raise ConfigError(f"color jitter hue must be in [0, 0.5], got {hue}")
    ranges = [_factor_range(brightness, "brightness"), _factor_range(contrast, "contrast"),
              _factor_range(saturation, "saturation")]
    order = torch.rand(batch, 4, generator=generator, device=device).argsort(dim=1)
    u = torch.rand(batch, 4, generator=generator, device=device)
    factors = torch.ones(batch, 4, device=device)
    for op, bounds in enumerate(ranges):
        if bounds is not None:
            factors[:, op] = bounds[0] + (bounds[1] - bounds[0]) * u[:, op]
    factors[:, HUE] = -hue + 2.0 * hue * u[:, HUE]
    return order, factors


def apply_jitter(x: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """Apply the four jitter ops to each image in its own order with its own factors."""
    out = x
    factors = factors.to(x.dtype)
    blends_on = bool((factors[:, :HUE] != 1).any())
    hue_on = bool((factors[:, HUE] != 0).any())
    for step in range(4):
        op = order[:, step]
        if blends_on:
            # Brightness, contrast and saturation are all blends: with black, the mean gray, the gray image.
            gray = grayscale(out)
            mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
            target = torch.where((op == BRIGHTNESS).view(-1, 1, 1, 1), torch.zeros_like(gray),
                                 torch.where((op == CONTRAST).view(-1, 1, 1, 1), mean.expand_as(gray), gray))
            factor = factors.gather(1, op.clamp(max=SATURATION).view(-1, 1)).view(-1)
            out = torch.where((op == HUE).view(-1, 1, 1, 1), out, blend(out, target, factor))
        if hue_on:
            # Hue is the expensive op: run it only on the images whose step this is.
            chosen = (op == HUE).nonzero().view(-1)
            if chosen.numel():
                shifted = adjust_hue(out.index_select(0, chosen), factors[chosen, HUE])
                out = out.index_copy(0, chosen, shifted)
    return out


def color_jitter(x: Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 generator: torch.Generator) -> Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) with per-image factors and op order.

    Each image draws its own factors and its own random order of the four ops, exactly as
    torchvision's ColorJitter does for one image (see `jitter_params`).
    """
    check_batch(x, "color_jitter")
    order, factors = jitter_params(x.shape[0], brightness, contrast, saturation, hue, generator, x.device)
    if brightness == contrast == saturation == hue == 0:
        return x
    return apply_jitter(x, order, factors)


__all__ = [
    "grayscale", "blend", "adjust_brightness", "adjust_contrast", "adjust_saturation", "rgb_to_hsv",
    "hsv_to_rgb", "adjust_hue", "jitter_params", "apply_jitter", "color_jitter",
]
