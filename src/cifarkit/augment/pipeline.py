"""Turn an AugmentConfig into the batch augmentation callable and the batch mixer.

The per-image ops run on [0, 1] batches before normalization, in the order `augment.order` gives
(by default crop, flip, policy, color jitter, rotation, perspective, erasing, cutout, progressive
resize; reference 003 ran its color jitter before AutoAugment, 004 its rotation before the jitter).
Mixing runs after normalization and lives in its own object (`build_mixer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cifarkit.augment import color, erasing, geometric, mixing, policies
from cifarkit.augment.schedule import resize_size_at
from cifarkit.config import AUGMENT_OPS, AugmentConfig
from cifarkit.errors import ConfigError

Op = Callable[[Tensor, torch.Generator, int, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class _Step:
    name: str
    run: Op


class AugmentPipeline:
    """augment(x01, *, generator, epoch, indices) -> x01 applying the configured per-image ops."""

    def __init__(self, steps: list[_Step], description: list[str]) -> None:
        self.steps = steps
        self.description = description

    @property
    def op_names(self) -> list[str]:
        return [step.name for step in self.steps]

    def __call__(self, x01: Tensor, *, generator: torch.Generator, epoch: int = 0,
                 indices: Tensor | None = None) -> Tensor:
        geometric.check_batch(x01, "augment")
        channels_last = x01.is_contiguous(memory_format=torch.channels_last) and not x01.is_contiguous()
        out = x01
        for step in self.steps:
            out = step.run(out, generator, epoch, indices)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __repr__(self) -> str:
        return f"AugmentPipeline({', '.join(self.op_names)})"


def _progressive_resize(schedule: list[list[int]]) -> Op:
    def run(x: Tensor, generator: torch.Generator, epoch: int, indices: Tensor | None) -> Tensor:
        size = resize_size_at(schedule, epoch)
        if size is None or size == x.shape[-1]:
            return x
        # torchvision's antialiased resize; imported here so only runs that resize pay for it
        from torchvision.transforms.v2 import functional as TF
        return TF.resize(x, [size, size], antialias=True)
    return run


def _alternating(seed: int) -> Op:
    def run(x: Tensor, generator: torch.Generator, epoch: int, indices: Tensor | None) -> Tensor:
        if indices is None:
            raise ValueError("flip 'alternate' needs the dataset indices of the batch (indices=...)")
        return geometric.alternating_flip(x, epoch, indices, seed)
    return run


def _per_device(value: Tensor) -> Callable[[torch.device], Tensor]:
    """`value` on a given device, copied there once: a host-to-device copy on every batch would make
    the CPU wait for all queued GPU work (the previous training step) before preparing the next batch."""
    copies: dict[torch.device, Tensor] = {}

    def on(device: torch.device) -> Tensor:
        if device not in copies:
            copies[device] = value.to(device)
        return copies[device]
    return on


def erasing_fill(cfg: AugmentConfig, mean: tuple[float, float, float],
                 std: tuple[float, float, float] | None) -> Callable[[Tensor, torch.Generator], Tensor]:
    """fill(x01, generator): what erased boxes are painted with, in the [0, 1] space erasing runs in.

    "mean" is the dataset mean colour (torchvision's value=0 after Normalize), 0 is black (value=0
    before Normalize), "random" is standard normal noise in normalized units (value="random" after
    Normalize), i.e. mean + std * N(0, 1) per pixel here; it needs `std`.
    """
    if cfg.erasing_fill == "random":
        if std is None:
            raise ConfigError("'augment.erasing_fill: random' needs the normalization std")
        m_on = _per_device(torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
        s_on = _per_device(torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

        def noise(x: Tensor, g: torch.Generator) -> Tensor:
            z = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            return m_on(x.device).to(x.dtype) + s_on(x.device).to(x.dtype) * z
        return noise
    colour_on = _per_device(torch.zeros(len(mean)) if cfg.erasing_fill == 0
                            else torch.tensor([float(v) for v in mean]))
    return lambda x, g: colour_on(x.device)


def build_augment(cfg: AugmentConfig, mean: tuple[float, float, float], seed: int = 0,
                  std: tuple[float, float, float] | None = None) -> AugmentPipeline | None:
    """The per-image augmentation of `cfg`, or None when it asks for none.

    Cutout paints `mean` (the dataset mean, 0 after normalization); erasing paints what
    `augment.erasing_fill` says (`std` is needed for its "random"); `seed` fixes the per-index
    bits of the alternating flip.
    """
    cfg.validate()
    fill_on = _per_device(torch.tensor([float(m) for m in mean]))
    erase_fill = erasing_fill(cfg, mean, std)
    slots: dict[str, _Step] = {}

    def add(slot: str, run: Op, name: str | None = None) -> None:
        slots[slot] = _Step(name or slot, run)

    if cfg.crop_padding > 0:
        add("crop", lambda x, g, e, i: geometric.random_crop(x, cfg.crop_padding, g, cfg.crop_mode))
    if cfg.flip == "random":
        add("flip", lambda x, g, e, i: geometric.random_flip(x, g))
    elif cfg.flip == "alternate":
        add("flip", _alternating(seed))
    if cfg.policy == "autoaugment":
        add("policy", lambda x, g, e, i: policies.autoaugment_cifar10(x, g), "autoaugment")
    elif cfg.policy == "randaugment":
        add("policy", lambda x, g, e, i: policies.randaugment(
            x, cfg.randaugment_ops, cfg.randaugment_magnitude, g), "randaugment")
    elif cfg.policy == "trivialaugment":
        add("policy", lambda x, g, e, i: policies.trivialaugment(x, g), "trivialaugment")
    if any(v > 0 for v in cfg.color_jitter):
        b, c, s, h = cfg.color_jitter
        add("color_jitter", lambda x, g, e, i: color.color_jitter(x, b, c, s, h, g))
    if cfg.rotation > 0:
        add("rotation", lambda x, g, e, i: geometric.random_rotation(x, cfg.rotation, g))
    if cfg.perspective > 0 and cfg.perspective_p > 0:
        add("perspective", lambda x, g, e, i: geometric.random_perspective(x, cfg.perspective, cfg.perspective_p, g))
    if cfg.erasing_p > 0:
        add("erasing", lambda x, g, e, i: erasing.random_erasing(
            x, cfg.erasing_p, cfg.erasing_scale, cfg.erasing_ratio, erase_fill(x, g), g))
    if cfg.cutout > 0:
        add("cutout", lambda x, g, e, i: erasing.cutout(x, cfg.cutout, fill_on(x.device), g))
    if cfg.resize_schedule:
        add("resize", _progressive_resize(cfg.resize_schedule))
    steps = [slots[slot] for slot in cfg.order if slot in slots]
    if not steps:
        return None
    return AugmentPipeline(steps, describe_augment(cfg))


def build_mixer(cfg: AugmentConfig, num_classes: int) -> mixing.Mixer | None:
    """The batch mixer of `cfg`, or None when MixUp and CutMix are both off."""
    if cfg.mixup_p <= 0 and cfg.cutmix_p <= 0:
        return None
    return mixing.Mixer(num_classes, cfg.mixup_p, cfg.mixup_alpha, cfg.cutmix_p, cfg.cutmix_alpha,
                        decay=cfg.mix_decay, until=cfg.mix_until)


def _range(values: list[float]) -> str:
    return f"{values[0]:g}-{values[1]:g}"


_FILL_NAMES = {0: "black", "mean": "mean", "random": "random normal"}


def describe_augment(cfg: AugmentConfig) -> list[str]:
    """Human-readable list of the active ops (per-image ops in their order, then batch mixing), for logs."""
    slots: dict[str, list[str]] = {slot: [] for slot in AUGMENT_OPS}
    if cfg.crop_padding > 0:
        slots["crop"].append(f"random crop (padding {cfg.crop_padding}, {cfg.crop_mode})")
    if cfg.flip == "random":
        slots["flip"].append("horizontal flip (random, p 0.5)")
    elif cfg.flip == "alternate":
        slots["flip"].append("horizontal flip (alternating between epochs)")
    if cfg.policy == "autoaugment":
        slots["policy"].append("AutoAugment (CIFAR10 policy)")
    elif cfg.policy == "randaugment":
        slots["policy"].append(f"RandAugment ({cfg.randaugment_ops} ops, magnitude {cfg.randaugment_magnitude}/30)")
    elif cfg.policy == "trivialaugment":
        slots["policy"].append("TrivialAugmentWide")
    if any(v > 0 for v in cfg.color_jitter):
        b, c, s, h = cfg.color_jitter
        slots["color_jitter"].append(f"color jitter (brightness {b:g}, contrast {c:g}, saturation {s:g}, hue {h:g})")
    if cfg.rotation > 0:
        slots["rotation"].append(f"rotation (+-{cfg.rotation:g} degrees)")
    if cfg.perspective > 0 and cfg.perspective_p > 0:
        slots["perspective"].append(f"perspective (distortion {cfg.perspective:g}, p {cfg.perspective_p:g})")
    if cfg.erasing_p > 0:
        slots["erasing"].append(f"random erasing (p {cfg.erasing_p:g}, scale {_range(cfg.erasing_scale)}, "
                                f"ratio {_range(cfg.erasing_ratio)}, fill {_FILL_NAMES[cfg.erasing_fill]})")
    if cfg.cutout > 0:
        slots["cutout"].append(f"cutout ({cfg.cutout}x{cfg.cutout}, fill mean)")
    for size, until in cfg.resize_schedule:
        slots["resize"].append(f"downscale to {size}x{size} (antialiased) before epoch {until}")
    lines = [line for slot in cfg.order if slot in slots for line in slots[slot]]
    schedule = ""
    if cfg.mix_decay == "linear":
        schedule = f", alpha decays linearly to 0 at {cfg.mix_until:.0%} of training"
    elif cfg.mix_decay == "linear_to_end":
        schedule = f", alpha x (1 - fraction of training done), off from {cfg.mix_until:.1%} of training"
    elif cfg.mix_until < 1:
        schedule = f", until {cfg.mix_until:.0%} of training"
    if cfg.mixup_p > 0:
        lines.append(f"MixUp (p {cfg.mixup_p:g}, alpha {cfg.mixup_alpha:g}{schedule})")
    if cfg.cutmix_p > 0:
        lines.append(f"CutMix (p {cfg.cutmix_p:g}, alpha {cfg.cutmix_alpha:g}{schedule})")
    return lines


__all__ = ["AugmentPipeline", "build_augment", "build_mixer", "describe_augment", "erasing_fill"]
