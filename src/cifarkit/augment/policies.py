"""AutoAugment (CIFAR10 policy), RandAugment and TrivialAugmentWide on batches, per-image choices.
(About 300 lines: the three policies share one op table and one set of uint8-semantics kernels.)

Op tables, magnitude bins, signs and probabilities are exactly those of torchvision's
transforms/autoaugment.py (fill 0, NEAREST interpolation). torchvision applies these policies to
uint8 images, so we do too: the batch is moved to the 0..255 integer grid (x * 255, rounded),
every op follows the uint8 kernel of torchvision.transforms.v2.functional (flooring, rounding and
truncating where it does), and the result is divided by 255 again. Images for which no op fires
are returned bit for bit unchanged.

Each image draws its own sub-policy / ops, magnitudes and signs; the batch is then grouped by op,
so each op runs once per step on the images that chose it (all warps share one grid_sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarkit.augment.color import blend, grayscale
from cifarkit.augment.geometric import affine, check_batch, inverse_affine_matrix
from cifarkit.errors import ConfigError

# --------------------------------------------------------------------------- op tables

OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)
OP_INDEX = {name: i for i, name in enumerate(OPS)}
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
RANDAUGMENT_OPS = OPS[:14]        # torchvision's RandAugment / TrivialAugmentWide space (no Invert)
SIGNED_OPS = frozenset(("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                        "Contrast", "Sharpness"))

# torchvision's AutoAugmentPolicy.CIFAR10: 25 sub-policies of (op, probability, magnitude bin).
CIFAR10_POLICY = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


def magnitude_table(num_bins: int, height: int, width: int, wide: bool = False) -> Tensor:
    """(len(OPS), num_bins) float32 magnitudes per op and bin, torchvision's `_augmentation_space`.

    wide=False is the AutoAugment / RandAugment space, wide=True TrivialAugmentWide's. Ops
    without a magnitude (Identity, AutoContrast, Equalize, Invert) have a row of zeros.
    """
    if wide:
        ranges = {"ShearX": 0.99, "ShearY": 0.99, "TranslateX": 32.0, "TranslateY": 32.0, "Rotate": 135.0,
                  "Brightness": 0.99, "Color": 0.99, "Contrast": 0.99, "Sharpness": 0.99}
        posterize_steps = 6
    else:
        ranges = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0 * width,
                  "TranslateY": 150.0 / 331.0 * height, "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9,
                  "Contrast": 0.9, "Sharpness": 0.9}
        posterize_steps = 4
    table = torch.zeros(len(OPS), num_bins)
    for name, top in ranges.items():
        table[OP_INDEX[name]] = torch.linspace(0.0, top, num_bins)
    bits = 8 - (torch.arange(num_bins) / ((num_bins - 1) / posterize_steps)).round().int()
    table[OP_INDEX["Posterize"]] = bits.float()
    table[OP_INDEX["Solarize"]] = torch.linspace(255.0, 0.0, num_bins)
    return table


_SIGNED = torch.tensor([name in SIGNED_OPS for name in OPS])


# --------------------------------------------------------------------------- uint8-semantics kernels
# All take v: float (n, 3, H, W) holding integers 0..255, and m: float32 (n,) signed magnitudes.

def _identity(v: Tensor, m: Tensor) -> Tensor:
    return v


def _brightness(v: Tensor, m: Tensor) -> Tensor:
    return (v * (1.0 + m).view(-1, 1, 1, 1)).clamp_(0, 255).trunc_()


def _color(v: Tensor, m: Tensor) -> Tensor:
    return blend(v, grayscale(v).floor_(), 1.0 + m, bound=255.0, truncate=True)


def _contrast(v: Tensor, m: Tensor) -> Tensor:
    mean = grayscale(v).floor_().mean(dim=(-3, -2, -1), keepdim=True)
    return blend(v, mean, 1.0 + m, bound=255.0, truncate=True)


_SHARPNESS_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def _sharpness(v: Tensor, m: Tensor) -> Tensor:
    # Blend with a smoothed copy on the interior only; the one-pixel border stays as it is.
    c = v.shape[1]
    kernel = _SHARPNESS_KERNEL.to(device=v.device, dtype=v.dtype).expand(c, 1, 3, 3)
    blurred = F.conv2d(v, kernel, groups=c).round_()
    out = v.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((blurred - inner) * (-m).view(-1, 1, 1, 1))      # alpha = 1 - factor = -m
    return out.clamp_(0, 255).trunc_()


def _posterize(v: Tensor, m: Tensor) -> Tensor:
    step = torch.exp2(8.0 - m.trunc()).view(-1, 1, 1, 1)       # keep the top `bits` bits
    return torch.floor(v / step) * step


def _solarize(v: Tensor, m: Tensor) -> Tensor:
    return torch.where(v >= m.view(-1, 1, 1, 1), 255.0 - v, v)


def _invert(v: Tensor, m: Tensor) -> Tensor:
    return 255.0 - v


def _autocontrast(v: Tensor, m: Tensor) -> Tensor:
    low = v.amin(dim=(-2, -1), keepdim=True)
    high = v.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, torch.ones_like(low), (high - low) * (1.0 / 255.0))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((v - low) / inv_scale).clamp_(0, 255).trunc_()


def _equalize(v: Tensor, m: Tensor) -> Tensor:
    """Per-channel histogram equalization with PIL's lookup table, as torchvision's equalize."""
    n, c, h, w = v.shape
    flat = v.reshape(n, c, h * w).long()
    hist = torch.zeros(n, c, 256, dtype=torch.int64, device=v.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    cum = hist.cumsum(2)
    last_bin = cum.argmax(dim=2, keepdim=True)                  # the highest value present
    step = torch.div(h * w - hist.gather(2, last_bin), 255, rounding_mode="floor")
    lut = torch.div(cum[..., :-1] + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=2)
    equalized = lut.gather(2, flat).view(n, c, h, w).to(v.dtype)
    return torch.where((step != 0).view(n, c, 1, 1), equalized, v)


_PIXEL_OPS = {
    "Identity": _identity, "Brightness": _brightness, "Color": _color, "Contrast": _contrast,
    "Sharpness": _sharpness, "Posterize": _posterize, "Solarize": _solarize, "AutoContrast": _autocontrast,
    "Equalize": _equalize, "Invert": _invert,
}


def _warp(v: Tensor, op: Tensor, m: Tensor) -> Tensor:
    """Shears, translations and rotations of a group of images in one nearest-neighbour warp."""
    n, _, h, w = v.shape
    m64 = m.double()
    zero = torch.zeros_like(m64)

    def pick(name: str, value: Tensor) -> Tensor:
        return torch.where(op == OP_INDEX[name], value, zero)

    shear_degrees = torch.rad2deg(torch.atan(m64))
    # torchvision shears about the top-left corner and rotates about the centre.
    corner = (op == OP_INDEX["ShearX"]) | (op == OP_INDEX["ShearY"])
    matrix = inverse_affine_matrix(
        angle=-torch.remainder(pick("Rotate", m64), 360.0),
        tx=pick("TranslateX", m64.trunc()), ty=pick("TranslateY", m64.trunc()),
        shear_x=pick("ShearX", shear_degrees), shear_y=pick("ShearY", shear_degrees),
        cx=torch.where(corner, -0.5 * w, 0.0).double(), cy=torch.where(corner, -0.5 * h, 0.0).double(),
    )
    return affine(v, matrix, interpolation="nearest", fill=None)


def apply_ops(v: Tensor, op: Tensor, magnitude: Tensor, apply: Tensor) -> Tensor:
    """One policy step: image i gets OPS[op[i]] with magnitude[i] where apply[i] is True.

    v holds 0..255 values; op is int64 (B,), magnitude float32 (B,) already signed.
    """
    chosen = torch.where(apply, op, torch.full_like(op, -1)).cpu()    # one device sync per step
    present = [int(k) for k in torch.unique(chosen) if k >= 0 and OPS[int(k)] != "Identity"]
    geometric = [k for k in present if OPS[k] in GEOMETRIC_OPS]
    groups = [[k] for k in present if OPS[k] not in GEOMETRIC_OPS] + ([geometric] if geometric else [])
    out = v
    for group in groups:
        rows_cpu = torch.isin(chosen, torch.tensor(group)).nonzero().view(-1)
        rows = rows_cpu.to(v.device, non_blocking=True)
        subset, m = out.index_select(0, rows), magnitude.index_select(0, rows)
        if len(group) == 1 and OPS[group[0]] in _PIXEL_OPS:
            result = _PIXEL_OPS[OPS[group[0]]](subset, m)
        else:
            result = _warp(subset, op.index_select(0, rows), m)
        out = out.index_copy(0, rows, result)
    return out


# --------------------------------------------------------------------------- policies

@dataclass(frozen=True)
class PolicyStep:
    """One op per image: OPS[op[i]] with signed magnitude[i], applied where apply[i] is True."""

    op: Tensor         # int64 (B,) index into OPS
    magnitude: Tensor  # float32 (B,), signed
    apply: Tensor      # bool (B,)


def run_steps(x: Tensor, steps: list[PolicyStep]) -> Tensor:
    """Apply policy steps in order on the uint8 grid; images no op touched come back unchanged."""
    v = (x * 255.0).round_().clamp_(0, 255)
    touched = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for step in steps:
        v = apply_ops(v, step.op, step.magnitude, step.apply)
        touched |= step.apply & (step.op != OP_INDEX["Identity"])
    return torch.where(touched.view(-1, 1, 1, 1), v / 255.0, x)


def _signed(magnitude: Tensor, op: Tensor, negative: Tensor) -> Tensor:
    signed = _SIGNED.to(op.device)[op]
    return torch.where(signed & negative, -magnitude, magnitude)


def autoaugment_steps(batch: int, size: tuple[int, int], generator: torch.Generator,
                      device: torch.device | str) -> list[PolicyStep]:
    """Per-image draws of AutoAugment's CIFAR10 policy: sub-policy, two probabilities, two signs."""
    table = magnitude_table(10, size[0], size[1]).to(device)
    policy_ops = torch.tensor([[OP_INDEX[name] for name, _, _ in pair] for pair in CIFAR10_POLICY], device=device)
    policy_p = torch.tensor([[p for _, p, _ in pair] for pair in CIFAR10_POLICY], device=device)
    policy_bins = torch.tensor([[bin_ or 0 for _, _, bin_ in pair] for pair in CIFAR10_POLICY], device=device)
    policy = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=generator, device=device)
    probs = torch.rand(batch, 2, generator=generator, device=device)
    signs = torch.randint(0, 2, (batch, 2), generator=generator, device=device)
    steps = []
    for i in range(2):
        op = policy_ops[policy, i]
        magnitude = table[op, policy_bins[policy, i]]
        # torchvision: the op runs when rand <= p; a sign draw of 0 negates a signed magnitude.
        steps.append(PolicyStep(op, _signed(magnitude, op, signs[:, i] == 0), probs[:, i] <= policy_p[policy, i]))
    return steps


def randaugment_steps(batch: int, size: tuple[int, int], num_ops: int, magnitude: int, generator: torch.Generator,
                      device: torch.device | str, num_magnitude_bins: int = 31) -> list[PolicyStep]:
    """Per-image draws of RandAugment: num_ops uniform ops from RANDAUGMENT_OPS, each with a random sign."""
    if num_ops < 0:
        raise ConfigError(f"RandAugment num_ops must be >= 0, got {num_ops}")
    if not 0 <= magnitude < num_magnitude_bins:
        raise ConfigError(f"RandAugment magnitude must be in [0, {num_magnitude_bins - 1}], got {magnitude}")
    table = magnitude_table(num_magnitude_bins, size[0], size[1]).to(device)
    always = torch.ones(batch, dtype=torch.bool, device=device)
    steps = []
    for _ in range(num_ops):
        op = torch.randint(0, len(RANDAUGMENT_OPS), (batch,), generator=generator, device=device)
        negative = torch.randint(0, 2, (batch,), generator=generator, device=device) == 1
        steps.append(PolicyStep(op, _signed(table[op, magnitude], op, negative), always))
    return steps


def trivialaugment_steps(batch: int, size: tuple[int, int], generator: torch.Generator, device: torch.device | str,
                         num_magnitude_bins: int = 31) -> list[PolicyStep]:
    """Per-image draws of TrivialAugmentWide: one uniform op, magnitude bin and sign."""
    table = magnitude_table(num_magnitude_bins, size[0], size[1], wide=True).to(device)
    op = torch.randint(0, len(RANDAUGMENT_OPS), (batch,), generator=generator, device=device)
    bins = torch.randint(0, num_magnitude_bins, (batch,), generator=generator, device=device)
    negative = torch.randint(0, 2, (batch,), generator=generator, device=device) == 1
    return [PolicyStep(op, _signed(table[op, bins], op, negative), torch.ones(batch, dtype=torch.bool, device=device))]


def autoaugment_cifar10(x: Tensor, generator: torch.Generator) -> Tensor:
    """AutoAugment with torchvision's CIFAR10 policy, one sub-policy, probabilities and signs per image."""
    check_batch(x, "autoaugment_cifar10")
    return run_steps(x, autoaugment_steps(x.shape[0], x.shape[-2:], generator, x.device))


def randaugment(x: Tensor, num_ops: int, magnitude: int, generator: torch.Generator,
                num_magnitude_bins: int = 31) -> Tensor:
    """RandAugment(num_ops, magnitude, 31 bins): num_ops uniformly chosen ops per image, random signs."""
    check_batch(x, "randaugment")
    steps = randaugment_steps(x.shape[0], x.shape[-2:], num_ops, magnitude, generator, x.device, num_magnitude_bins)
    return run_steps(x, steps)


def trivialaugment(x: Tensor, generator: torch.Generator, num_magnitude_bins: int = 31) -> Tensor:
    """TrivialAugmentWide: one op per image with a uniformly drawn magnitude bin and sign."""
    check_batch(x, "trivialaugment")
    return run_steps(x, trivialaugment_steps(x.shape[0], x.shape[-2:], generator, x.device, num_magnitude_bins))


__all__ = [
    "OPS", "RANDAUGMENT_OPS", "CIFAR10_POLICY", "PolicyStep", "magnitude_table", "apply_ops", "run_steps",
    "autoaugment_steps", "randaugment_steps", "trivialaugment_steps", "autoaugment_cifar10", "randaugment",
    "trivialaugment",
]
