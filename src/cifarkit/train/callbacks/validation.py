"""Validation on the held-out split after every epoch: the numbers model selection and early
stopping act on. Validation images get the test-time transform, never the training augmentation."""

from __future__ import annotations

import torch
from torch import nn

from cifarkit.evaluate.inference import eval_mode, score_batch
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.distributed import World


@torch.no_grad()
def validate(model: nn.Module, loader, precision: str, world: World | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on an un-augmented (images, labels) loader.

    With several processes each rank scores every W-th batch and the per-batch sums are gathered
    and added in batch order, so the numbers are those of one process scoring every batch."""
    if world is None or world.size == 1:
        own = enumerate(loader)
    else:
        numbers = range(world.rank, len(loader), world.size)
        own = zip(numbers, loader.iter_batches(numbers))
    mine = []
    with eval_mode(model):
        for b, (x, y) in own:
            logits = score_batch(model, x, mode="none", precision=precision, output="logits")
            batch_loss = nn.functional.cross_entropy(logits, y, reduction="sum").double()
            mine.append((b, batch_loss, (logits.argmax(1) == y).sum(), y.numel()))
    mine = [(b, loss.item(), hits.item(), n) for b, loss, hits, n in mine]
    batches = sorted(sum(world.gather(mine), []) if world is not None else mine)
    count = sum(n for *_, n in batches)
    if count == 0:
        return 0.0, 0.0
    loss_sum = batches[0][1]
    for _, loss, _, _ in batches[1:]:     # in batch order, as one process adds them
        loss_sum += loss
    return loss_sum / count, sum(hits for _, _, hits, _ in batches) / count


class Validation(Callback):
    """Adds `val_loss` and `val_acc` of the live model to each epoch's record."""

    def __init__(self, loader):
        self.loader = loader

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        record["val_loss"], record["val_acc"] = validate(trainer.model, self.loader, trainer.cfg.precision,
                                                         getattr(trainer, "world", None))


__all__ = ["validate", "Validation"]
