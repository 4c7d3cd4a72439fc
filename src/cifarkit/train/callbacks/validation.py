"""Validation on the held-out split after every epoch: the numbers model selection and early
stopping act on. Validation images get the test-time transform, never the training augmentation."""

from __future__ import annotations

import torch
from torch import nn

from cifarkit.evaluate.inference import eval_mode, score_batch
from cifarkit.train.callbacks.base import Callback


@torch.no_grad()
def validate(model: nn.Module, loader, precision: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on an un-augmented (images, labels) loader."""
    loss_sum = correct = None
    count = 0
    with eval_mode(model):
        for x, y in loader:
            logits = score_batch(model, x, mode="none", precision=precision, output="logits")
            batch_loss = nn.functional.cross_entropy(logits, y, reduction="sum").double()
            batch_hits = (logits.argmax(1) == y).sum()
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_hits if correct is None else correct + batch_hits
            count += y.numel()
    if count == 0:
        return 0.0, 0.0
    return loss_sum.item() / count, correct.item() / count


class Validation(Callback):
    """Adds `val_loss` and `val_acc` of the live model to each epoch's record."""

    def __init__(self, loader):
        self.loader = loader

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        record["val_loss"], record["val_acc"] = validate(trainer.model, self.loader, trainer.cfg.precision)


__all__ = ["validate", "Validation"]
