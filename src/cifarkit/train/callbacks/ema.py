"""A per-step exponential moving average of the weights, as a callback (the arithmetic is
`train.averaging.EMA`).

Which EMA weights `ema.pt` keeps (`train.ema_keep`):
  last      the average at the end of training
  at_best   the average at the epoch whose live model had the best validation accuracy, saved
            beside best.pt (reference 000's ensemble member)
  best      the average at the epoch of its own best validation accuracy (reference 004's
            deployed model)
"""

from __future__ import annotations

import copy

from torch import nn

from cifarkit.rundir import RunDir
from cifarkit.train.averaging import EMA
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.callbacks.checkpoints import save_weights
from cifarkit.train.callbacks.validation import validate


class EMACallback(Callback):
    """Updated after every step; validated each epoch when a validation loader is given
    (`ema_val_loss`, `ema_val_acc`); saved as `ema.pt` as `keep` says."""

    state_key = "ema"

    def __init__(self, model: nn.Module, decay: float, val_loader=None, run: RunDir | None = None, *,
                 average_buffers: bool = True, keep: str = "last"):
        if keep != "last" and val_loader is None:
            raise ValueError(f"keeping the EMA of the {keep} epoch needs a validation loader")
        self.ema = EMA(model, decay, average_buffers=average_buffers)
        self.val_loader, self.run, self.keep = val_loader, run, keep
        self.kept_val_acc = -1.0           # the validation accuracy that decided the kept weights
        self.kept_state: dict | None = None

    def on_step_end(self, trainer, completed_steps: int) -> None:
        self.ema.update(trainer.model)

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        if self.val_loader is None:
            return
        record["ema_val_loss"], record["ema_val_acc"] = validate(self.ema.module, self.val_loader,
                                                                 trainer.cfg.precision, getattr(trainer, "world", None))
        # The Validation callback ran before this one; BestModel, which updates best_val_acc, after it.
        deciding = {"at_best": (record.get("val_acc"), trainer.state.best_val_acc),
                    "best": (record["ema_val_acc"], self.kept_val_acc)}.get(self.keep)
        if deciding is not None and deciding[0] is not None and deciding[0] > deciding[1]:
            self.kept_val_acc = deciding[0]
            self.kept_state = {k: v.detach().clone() for k, v in self.ema.module.state_dict().items()}
            save_weights(self.run, trainer, "ema", self.ema.module, epoch=epoch + 1, val_acc=deciding[0],
                         keep=self.keep)

    def on_fit_end(self, trainer) -> None:
        if self.keep == "last":
            save_weights(self.run, trainer, "ema", self.ema.module, epoch=trainer.state.epoch, keep=self.keep)

    def trained_models(self) -> dict[str, nn.Module]:
        if self.keep == "last":
            return {"ema": self.ema.module}
        if self.kept_state is None:      # kept before a resume: evaluation reads ema.pt
            return {}
        kept = copy.deepcopy(self.ema.module)
        kept.load_state_dict(self.kept_state)
        return {"ema": kept}

    def state_dict(self) -> dict:
        return {**self.ema.state_dict(), "kept_val_acc": self.kept_val_acc}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
        self.kept_val_acc = float(state.get("kept_val_acc", -1.0))


__all__ = ["EMACallback"]
