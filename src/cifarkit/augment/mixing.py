"""MixUp and CutMix on whole (normalized) batches, with soft targets and a decay schedule.

Per batch one coin decides: MixUp with probability mixup_p, else CutMix with probability
cutmix_p, else nothing. Partners come from a random permutation of the batch. CutMix draws its
box like torchvision.transforms.v2.CutMix and corrects lambda to the box's actual area.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarkit.augment.erasing import box_mask
from cifarkit.augment.schedule import mix_strength
from cifarkit.errors import ConfigError

MIN_ALPHA = 1e-6    # an effective alpha at or below this means "no mixing"


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw, reproducible from `generator` (torch has no seeded Beta)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return random.Random(seed).betavariate(alpha, alpha)


def cutmix_box(lam: float, size: tuple[int, int], generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a box of area about (1 - lam) * H * W centred uniformly, clipped."""
    h, w = size
    centre = torch.randint(0, 2**31 - 1, (2,), generator=generator, device=generator.device).tolist()
    cy, cx = centre[0] % h, centre[1] % w
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * w), int(r * h)
    return max(cy - half_h, 0), max(cx - half_w, 0), min(cy + half_h, h), min(cx + half_w, w)


class Mixer:
    """Per-batch MixUp / CutMix with soft targets; see the module docstring."""

    def __init__(self, num_classes: int, mixup_p: float, mixup_alpha: float, cutmix_p: float,
                 cutmix_alpha: float, decay: str = "none", until: float = 1.0) -> None:
        if num_classes < 2:
            raise ConfigError(f"mixing needs at least 2 classes, got {num_classes}")
        for name, p in (("mixup_p", mixup_p), ("cutmix_p", cutmix_p)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"'{name}' must be in [0, 1], got {p}")
        if mixup_p + cutmix_p > 1.0 + 1e-9:
            raise ConfigError(f"mixup_p + cutmix_p must be <= 1, got {mixup_p + cutmix_p}")
        if mixup_alpha <= 0 or cutmix_alpha <= 0:
            raise ConfigError("mixing alphas must be positive")
        mix_strength(0.0, decay, until)        # validates decay and until
        self.num_classes = num_classes
        self.mixup_p, self.mixup_alpha = mixup_p, mixup_alpha
        self.cutmix_p, self.cutmix_alpha = cutmix_p, cutmix_alpha
        self.decay, self.until = decay, until

    def alphas(self, progress: float) -> tuple[float, float]:
        """Effective (mixup, cutmix) alphas at this point of training."""
        strength = mix_strength(progress, self.decay, self.until)
        return self.mixup_alpha * strength, self.cutmix_alpha * strength

    def active(self, progress: float) -> bool:
        """Whether any batch at this progress could be mixed."""
        mixup_alpha, cutmix_alpha = self.alphas(progress)
        return (self.mixup_p > 0 and mixup_alpha > MIN_ALPHA) or (self.cutmix_p > 0 and cutmix_alpha > MIN_ALPHA)

    def __call__(self, x: Tensor, y: Tensor, progress: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Mix a batch: returns (x_mixed, soft targets (B, num_classes) float32 whose rows sum to 1)."""
        targets = F.one_hot(y.long(), self.num_classes).to(torch.float32)
        if not self.active(progress):
            return x, targets
        mixup_alpha, cutmix_alpha = self.alphas(progress)
        u = float(torch.rand(1, generator=generator, device=generator.device).item())
        if u < self.mixup_p:
            kind, alpha = "mixup", mixup_alpha
        elif u < self.mixup_p + self.cutmix_p:
            kind, alpha = "cutmix", cutmix_alpha
        else:
            return x, targets
        if alpha <= MIN_ALPHA:
            return x, targets
        perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
        lam = sample_beta(alpha, generator)
        partner = x.index_select(0, perm)
        if kind == "mixup":
            mixed = torch.lerp(partner, x, lam)     # lam * x + (1 - lam) * partner
        else:
            h, w = x.shape[-2], x.shape[-1]
            top, left, bottom, right = cutmix_box(lam, (h, w), generator)
            one = torch.ones(1, dtype=torch.long, device=x.device)
            mask = box_mask(one * top, one * left, one * (bottom - top), one * (right - left), (h, w))
            mixed = torch.where(mask, partner, x)
            lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        soft = targets * lam + targets.index_select(0, perm) * (1.0 - lam)
        return mixed, soft

    def __repr__(self) -> str:
        return (f"Mixer(num_classes={self.num_classes}, mixup_p={self.mixup_p}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_p={self.cutmix_p}, cutmix_alpha={self.cutmix_alpha}, decay='{self.decay}', "
                f"until={self.until})")


__all__ = ["Mixer", "MIN_ALPHA", "sample_beta", "cutmix_box"]
