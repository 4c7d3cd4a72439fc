"""Batched geometric augmentation with per-image randomness: crop, flip, rotation, perspective.
(About 300 lines: the crop, affine and perspective kernels share their window and grid helpers,
which is why they stay in one module.)

Every function takes a float batch x of shape (B, C, H, W) with values in [0, 1], on any device,
and draws its randomness from an explicit `torch.Generator` on that device. Parameters follow
torchvision's RandomCrop / RandomHorizontalFlip / RandomRotation / RandomPerspective, but each
image gets its own draw; the warps are one `grid_sample` over the whole batch with per-image
matrices built exactly like torchvision's `affine` / `rotate` / `perspective` kernels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarkit.errors import ConfigError

Interpolation = Literal["nearest", "bilinear"]
Fill = float | Tensor | None


def check_batch(x: Tensor, op: str) -> None:
    """Reject anything that is not a floating (B, C, H, W) batch, naming the op."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{op} expects a float batch of shape (B, C, H, W), got {shape}")


def _check_prob(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")


# --------------------------------------------------------------------------- crops and shifts

def _reflect(index: Tensor, size: int) -> Tensor:
    """Mirror out-of-range indices back inside [0, size) without repeating the edge (reflect padding)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _gather_window(x: Tensor, top: Tensor, left: Tensor, height: int, width: int, reflect: bool = False) -> Tensor:
    """Per-image window x[b, :, top_b:top_b+height, left_b:left_b+width].

    Pixels outside x are 0, or with reflect=True mirrored back in (valid for overhangs < H, W).
    """
    b, c, h, w = x.shape
    rows = top.view(b, 1) + torch.arange(height, device=x.device).view(1, height)   # (B, height)
    cols = left.view(b, 1) + torch.arange(width, device=x.device).view(1, width)    # (B, width)
    if reflect:
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    inside = ((rows >= 0) & (rows < h)).view(b, height, 1) & ((cols >= 0) & (cols < w)).view(b, 1, width)
    flat_index = rows.clamp(0, h - 1).view(b, height, 1) * w + cols.clamp(0, w - 1).view(b, 1, width)
    flat_index = flat_index.view(b, 1, height * width).expand(b, c, height * width)
    out = x.reshape(b, c, h * w).gather(2, flat_index).view(b, c, height, width)
    if reflect:
        return out
    return out * inside.view(b, 1, height, width).to(x.dtype)


def crop(x: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """Crop a (height, width) window at per-image offsets (top, left: int64 (B,)); outside is 0."""
    check_batch(x, "crop")
    return _gather_window(x, top.long(), left.long(), height, width)


def translate(x: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Shift image b right by dx[b] and down by dy[b] whole pixels (int64 (B,)), filling with 0."""
    check_batch(x, "translate")
    return _gather_window(x, -dy.long(), -dx.long(), x.shape[-2], x.shape[-1])


def random_crop(x: Tensor, padding: int, generator: torch.Generator,
                mode: Literal["zeros", "reflect"] = "zeros") -> Tensor:
    """RandomCrop(size=(H, W), padding) per image: pad every side, crop at a uniform offset."""
    check_batch(x, "random_crop")
    if padding < 0:
        raise ConfigError(f"crop padding must be >= 0, got {padding}")
    if mode not in ("zeros", "reflect"):
        raise ConfigError(f"crop mode must be 'zeros' or 'reflect', got '{mode}'")
    if padding == 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
    if mode == "reflect" and padding >= min(h, w):
        raise ConfigError(f"reflect padding must be smaller than the image ({h}x{w}), got {padding}")
    # A crop of the padded image is a shifted window of x with zero or mirrored fill: no padded copy.
    return _gather_window(x, offsets[0] - padding, offsets[1] - padding, h, w, reflect=mode == "reflect")


# --------------------------------------------------------------------------- flips

def flip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images whose entry in the bool mask `flip` (B,) is True."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """RandomHorizontalFlip(p) with an independent coin per image."""
    check_batch(x, "random_flip")
    _check_prob(p, "flip probability")
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return flip_where(x, flip)


_HASH_PRIME = 2_147_483_647          # 2**31 - 1: products of two residues stay inside int64
_HASH_MULTIPLIERS = (48_271, 69_621, 40_692)


def index_bits(indices: Tensor, seed: int) -> Tensor:
    """A fixed pseudo-random bit per dataset index (int64 (B,)), the same on every call and device."""
    state = (indices.long() % _HASH_PRIME + (seed % _HASH_PRIME) * 7_919 + 1) % _HASH_PRIME
    for multiplier in _HASH_MULTIPLIERS:
        # A few rounds of a Lehmer generator: cheap, overflow-free mixing of index and seed.
        state = (state * multiplier + 12_345) % _HASH_PRIME
    return (state >> 13) & 1


def alternating_flip(x: Tensor, epoch: int, indices: Tensor, seed: int) -> Tensor:
    """Flip image i in epoch e iff (b_i + e) % 2 == 1, b_i a fixed bit per dataset index.

    Every image is therefore seen mirrored in exactly one of any two consecutive epochs (airbench's
    alternating flip), while within an epoch about half the images are mirrored.
    """
    check_batch(x, "alternating_flip")
    if indices.shape != (x.shape[0],):
        raise ValueError(f"alternating_flip needs one dataset index per image, got shape {tuple(indices.shape)}")
    flip = (index_bits(indices.to(x.device), seed) + int(epoch)) % 2 == 1
    return flip_where(x, flip)


# --------------------------------------------------------------------------- affine warps

def inverse_affine_matrix(angle: Tensor, tx: Tensor, ty: Tensor, shear_x: Tensor, shear_y: Tensor,
                          cx: Tensor | float = 0.0, cy: Tensor | float = 0.0, scale: float = 1.0) -> Tensor:
    """Batched torchvision `_get_inverse_affine_matrix` (angles in degrees, float64 (B,) tensors).

    Returns (B, 2, 3) float64 matrices mapping output pixel coordinates (origin at the image
    centre) to input coordinates; (cx, cy) is the centre of the transform in that frame.
    """
    rot = torch.deg2rad(angle.double())
    sx = torch.deg2rad(shear_x.double())
    sy = torch.deg2rad(shear_y.double())
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    cx_plus_tx, cy_plus_ty = cx + tx.double(), cy + ty.double()
    m2 = cx - m0 * cx_plus_tx - m1 * cy_plus_ty
    m5 = cy - m3 * cx_plus_tx - m4 * cy_plus_ty
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def _pixel_centres(h: int, w: int, offset_x: float, offset_y: float, dtype: torch.dtype,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """Output pixel-centre coordinates as (1, 1, w) and (1, h, 1) tensors, shifted by the offsets."""
    xs = torch.linspace(offset_x, offset_x + w - 1.0, steps=w, device=device, dtype=dtype).view(1, 1, w)
    ys = torch.linspace(offset_y, offset_y + h - 1.0, steps=h, device=device, dtype=dtype).view(1, h, 1)
    return xs, ys


def _half_size(w: int, h: int, like: Tensor) -> Tensor:
    """(1, 2, 1) tensor [w / 2, h / 2] on like's device, filled there: a tensor built from a Python
    list would be a host-to-device copy, which waits for all queued GPU work on every batch."""
    def full(value: float) -> Tensor:
        return torch.full((1, 1), value, dtype=like.dtype, device=like.device)
    return torch.stack([full(0.5 * w), full(0.5 * h)], dim=1)


def _apply_rows(theta: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2, 3) matrices applied to homogeneous points (x, y, 1): two (B, h, w) coordinate maps.

    Written out elementwise rather than as a batched matmul against an expanded grid: same
    numbers, and no BLAS call whose threading can stall on a busy machine.
    """
    t = theta.reshape(-1, 6, 1, 1)
    first = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    second = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return first, second


def sample_grid(x: Tensor, grid: Tensor, interpolation: Interpolation, fill: Fill) -> Tensor:
    """grid_sample with torchvision's fill semantics (zeros, or `fill` where the grid leaves x)."""
    fill_value = None
    if fill is not None:
        fill_value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
        if bool((fill_value == 0).all()):
            fill_value = None
    if fill_value is None:
        return F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    # An extra all-ones channel tells which output pixels came from inside the image.
    ones = torch.ones_like(x[:, :1])
    warped = F.grid_sample(torch.cat([x, ones], dim=1), grid, mode=interpolation,
                           padding_mode="zeros", align_corners=False)
    image, mask = warped[:, :-1], warped[:, -1:]
    fill_image = fill_value.view(1, -1, 1, 1)
    if interpolation == "nearest":
        return torch.where(mask < 0.5, fill_image.expand_as(image), image)
    return (image - fill_image) * mask + fill_image


def affine(x: Tensor, inverse_matrix: Tensor, interpolation: Interpolation = "nearest", fill: Fill = None) -> Tensor:
    """Warp each image by its (B, 2, 3) inverse affine matrix (see `inverse_affine_matrix`)."""
    check_batch(x, "affine")
    _, _, h, w = x.shape
    theta = inverse_matrix.to(device=x.device, dtype=x.dtype)
    xs, ys = _pixel_centres(h, w, (1.0 - w) * 0.5, (1.0 - h) * 0.5, x.dtype, x.device)
    # Rescale like torchvision's _affine_grid: input pixel units -> grid_sample's [-1, 1].
    gx, gy = _apply_rows(theta / _half_size(w, h, x), xs, ys)
    return sample_grid(x, torch.stack([gx, gy], dim=-1), interpolation, fill)


def rotate(x: Tensor, angles: Tensor, interpolation: Interpolation = "nearest", fill: Fill = None) -> Tensor:
    """Rotate image b counter-clockwise by angles[b] degrees about its centre (torchvision `rotate`)."""
    angles = torch.remainder(angles.double().to(x.device), 360.0)
    zeros = torch.zeros_like(angles)
    # torchvision's rotate builds the affine matrix from -angle.
    matrix = inverse_affine_matrix(-angles, zeros, zeros, zeros, zeros)
    return affine(x, matrix, interpolation, fill)


def random_rotation(x: Tensor, degrees: float, generator: torch.Generator,
                    interpolation: Interpolation = "nearest", fill: Fill = None) -> Tensor:
    """RandomRotation(degrees) per image: angle uniform in [-degrees, degrees], NEAREST by default."""
    check_batch(x, "random_rotation")
    if degrees < 0:
        raise ConfigError(f"rotation degrees must be >= 0, got {degrees}")
    if degrees == 0:
        return x
    u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)
    return rotate(x, -degrees + 2.0 * degrees * u, interpolation, fill)


# --------------------------------------------------------------------------- perspective

def perspective_coefficients(startpoints: Tensor, endpoints: Tensor) -> Tensor:
    """Batched torchvision `_get_perspective_coeffs`: (B, 4, 2) corner lists -> (B, 8) float64.

    The 8x8 system is square (four point pairs), so it is solved directly in float64; a
    degenerate quadrilateral falls back to the identity transform instead of failing.
    """
    start, end = startpoints.double(), endpoints.double()
    b = start.shape[0]
    ex, ey = end[..., 0], end[..., 1]
    sx, sy = start[..., 0], start[..., 1]
    one, zero = torch.ones_like(ex), torch.zeros_like(ex)
    rows_x = torch.stack([ex, ey, one, zero, zero, zero, -sx * ex, -sx * ey], dim=-1)   # (B, 4, 8)
    rows_y = torch.stack([zero, zero, zero, ex, ey, one, -sy * ex, -sy * ey], dim=-1)
    system = torch.stack([rows_x, rows_y], dim=2).view(b, 8, 8)
    target = start.reshape(b, 8)
    solution, info = torch.linalg.solve_ex(system, target)
    identity = torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0], dtype=torch.float64, device=start.device)
    ok = (info == 0) & torch.isfinite(solution).all(dim=1)
    return torch.where(ok.view(b, 1), solution, identity)


def perspective(x: Tensor, coefficients: Tensor, interpolation: Interpolation = "bilinear",
                fill: Fill = None) -> Tensor:
    """Warp image b by its 8 perspective coefficients (torchvision `perspective` kernel)."""
    check_batch(x, "perspective")
    b, _, h, w = x.shape
    coeffs = coefficients.to(device=x.device, dtype=torch.float32).to(x.dtype)
    xs, ys = _pixel_centres(h, w, 0.5, 0.5, x.dtype, x.device)
    num_x, num_y = _apply_rows(coeffs[:, :6].view(b, 2, 3) / _half_size(w, h, x), xs, ys)
    c = coeffs.view(b, 8, 1, 1)
    denominator = c[:, 6] * xs + c[:, 7] * ys + 1.0
    grid = torch.stack([num_x / denominator - 1.0, num_y / denominator - 1.0], dim=-1)
    return sample_grid(x, grid, interpolation, fill)


def perspective_endpoints(batch: int, size: tuple[int, int], distortion: float, generator: torch.Generator,
                          device: torch.device | str) -> Tensor:
    """(B, 4, 2) corners (top-left, top-right, bottom-right, bottom-left) as RandomPerspective.get_params.

    Each corner moves inwards by a uniform whole number of pixels in [0, int(distortion * half)].
    """
    h, w = size
    reach_x, reach_y = int(distortion * (w // 2)), int(distortion * (h // 2))
    jitter_x = torch.randint(0, reach_x + 1, (batch, 4), generator=generator, device=device)
    jitter_y = torch.randint(0, reach_y + 1, (batch, 4), generator=generator, device=device)
    low_x = torch.tensor([0, w - reach_x - 1, w - reach_x - 1, 0], device=device)
    low_y = torch.tensor([0, 0, h - reach_y - 1, h - reach_y - 1], device=device)
    return torch.stack([low_x + jitter_x, low_y + jitter_y], dim=-1)


def perspective_startpoints(size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
    h, w = size
    return torch.tensor([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], device=device)


def random_perspective(x: Tensor, distortion: float, p: float, generator: torch.Generator,
                       interpolation: Interpolation = "bilinear", fill: Fill = None) -> Tensor:
    """RandomPerspective(distortion, p) per image: its own coin and corners (BILINEAR by default)."""
    check_batch(x, "random_perspective")
    if not 0.0 <= distortion <= 1.0:
        raise ConfigError(f"perspective distortion must be in [0, 1], got {distortion}")
    _check_prob(p, "perspective probability")
    if distortion == 0 or p == 0:
        return x
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=generator, device=x.device) < p
    endpoints = perspective_endpoints(b, (h, w), distortion, generator, x.device)
    startpoints = perspective_startpoints((h, w), x.device).expand(b, 4, 2)
    warped = perspective(x, perspective_coefficients(startpoints, endpoints), interpolation, fill)
    return torch.where(apply.view(b, 1, 1, 1), warped, x)


__all__ = [
    "check_batch", "crop", "translate", "random_crop", "flip_where", "random_flip", "index_bits",
    "alternating_flip", "inverse_affine_matrix", "sample_grid", "affine", "rotate", "random_rotation",
    "perspective_coefficients", "perspective", "perspective_endpoints", "perspective_startpoints",
    "random_perspective",
]
