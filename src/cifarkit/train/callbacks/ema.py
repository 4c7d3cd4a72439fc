"""A per-step exponential moving average of the weights, as a callback (the arithmetic is
`train.averaging.EMA`)."""

from __future__ import annotations

from torch import nn

from cifarkit.rundir import RunDir
from cifarkit.train.averaging import EMA
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.callbacks.checkpoints import save_weights
from cifarkit.train.callbacks.validation import validate


class EMACallback(Callback):
    """A per-step exponential moving average of the weights; validated each epoch when a
    validation loader is given (`ema_val_loss`, `ema_val_acc`), saved as `ema.pt` at the end."""

    state_key = "ema"

    def __init__(self, model: nn.Module, decay: float, val_loader=None, run: RunDir | None = None):
        self.ema = EMA(model, decay)
        self.val_loader, self.run = val_loader, run

    def on_step_end(self, trainer, completed_steps: int) -> None:
        self.ema.update(trainer.model)

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        if self.val_loader is not None:
            record["ema_val_loss"], record["ema_val_acc"] = validate(self.ema.module, self.val_loader,
                                                                     trainer.cfg.precision)

    def on_fit_end(self, trainer) -> None:
        save_weights(self.run, trainer, "ema", self.ema.module, epoch=trainer.state.epoch)

    def trained_models(self) -> dict[str, nn.Module]:
        return {"ema": self.ema.module}

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


__all__ = ["EMACallback"]
