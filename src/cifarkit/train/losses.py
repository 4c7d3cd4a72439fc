"""Classification losses that accept hard labels or soft (mixed) targets, with label smoothing.

Both losses compute in float32 even when the forward pass ran under autocast: the logits are cast
before the softmax so that bf16/fp16 rounding never reaches the loss value or its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarkit.config import TrainConfig
from cifarkit.errors import ConfigError


SMOOTHING_FORMS = ("uniform", "other_classes")


def uniform_smoothing(smoothing: float, num_classes: int, form: str = "uniform") -> float:
    """The eps' of the uniform form t' = (1 - eps') t + eps' / C that gives `form` with `smoothing`.

    "uniform" is torch's label_smoothing: eps' = eps. "other_classes" gives the true class 1 - eps
    and each of the other C - 1 classes eps / (C - 1); that is the uniform form with
    eps' = eps * C / (C - 1), also for soft (mixed) targets, because both are linear in t.
    """
    if form == "uniform":
        return float(smoothing)
    if form == "other_classes":
        if num_classes < 2:
            raise ConfigError("label smoothing over the other classes needs at least 2 classes")
        return float(smoothing) * num_classes / (num_classes - 1)
    raise ConfigError(f"unknown label smoothing form '{form}'; choose {' or '.join(SMOOTHING_FORMS)}")


def smoothed_targets(target: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """Target distribution t' = t * (1 - eps) + eps / C, from int64 labels (B,) or soft targets (B, C)."""
    if target.ndim == 1:
        soft = F.one_hot(target.long(), num_classes).float()
    elif target.ndim == 2 and target.shape[1] == num_classes:
        soft = target.float()
    else:
        raise ValueError(f"targets must be labels (B,) or probabilities (B, {num_classes}), "
                         f"got shape {tuple(target.shape)}")
    if smoothing:
        soft = soft * (1.0 - smoothing) + smoothing / num_classes
    return soft


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy -sum_c t'_c log p_c, mean over the batch, with t' the label-smoothed target.

    Hard labels take torch's own `cross_entropy(label_smoothing=eps)`, which is the same formula;
    soft targets (MixUp/CutMix) are smoothed the same way before the sum. `form` "other_classes"
    spreads eps over the C - 1 wrong classes instead (see `uniform_smoothing`).
    """

    def __init__(self, label_smoothing: float = 0.0, form: str = "uniform"):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.form = form
        uniform_smoothing(0.0, 2, form)          # validates the form

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        eps = uniform_smoothing(self.label_smoothing, logits.shape[1], self.form)
        if target.ndim == 1:
            return F.cross_entropy(logits, target, label_smoothing=eps)
        soft = smoothed_targets(target, logits.shape[1], eps)
        return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class FocalLoss(nn.Module):
    """Focal loss with label smoothing:

        L = mean_over_batch( sum_c  -t'_c * (1 - p_c) ** gamma * log p_c ),
        p = softmax(logits),  t' = t * (1 - eps) + eps / C.

    With gamma = 0 the modulating factor is 1 and L is the label-smoothed cross-entropy. `form`
    "other_classes" gives t'_true = 1 - eps and eps / (C - 1) elsewhere (reference 000's loss).
    """

    def __init__(self, gamma: float = 1.0, label_smoothing: float = 0.0, form: str = "uniform"):
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.form = form
        uniform_smoothing(0.0, 2, form)          # validates the form

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        log_p = F.log_softmax(logits, dim=1)
        eps = uniform_smoothing(self.label_smoothing, logits.shape[1], self.form)
        soft = smoothed_targets(target, logits.shape[1], eps)
        if self.gamma == 0:
            weight = torch.ones_like(log_p)
        else:
            # -expm1(log p) = 1 - p without cancellation; the floor keeps the gradient of
            # x ** gamma finite for gamma < 1 when a class is predicted with certainty.
            weight = (-torch.expm1(log_p)).clamp_min(1e-30).pow(self.gamma)
        return -(soft * weight * log_p).sum(dim=1).mean()


def build_loss(cfg: TrainConfig) -> nn.Module:
    """The training loss named by `train.loss` (ce or focal; the recipe schema admits no other)."""
    if cfg.loss == "focal":
        return FocalLoss(cfg.focal_gamma, cfg.label_smoothing, cfg.label_smoothing_form)
    return SoftTargetCrossEntropy(cfg.label_smoothing, cfg.label_smoothing_form)


__all__ = ["build_loss", "SoftTargetCrossEntropy", "FocalLoss", "smoothed_targets", "uniform_smoothing",
           "SMOOTHING_FORMS"]
