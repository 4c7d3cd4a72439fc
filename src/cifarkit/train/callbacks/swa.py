"""Stochastic weight averaging as a callback (the arithmetic is `train.averaging.SWA`)."""

from __future__ import annotations

from torch import nn

from cifarkit.rundir import RunDir
from cifarkit.train.averaging import SWA
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.callbacks.checkpoints import save_weights


class SWACallback(Callback):
    """Stochastic weight averaging of the weights at the end of every epoch from `start_epoch` on;
    at the end, BatchNorm statistics are recomputed on a pass over the (augmented) training data
    and the average is saved as `swa.pt`."""

    state_key = "swa"

    def __init__(self, model: nn.Module, start_epoch: int, train_loader, run: RunDir | None = None):
        self.swa = SWA(model)
        self.start_epoch, self.train_loader, self.run = start_epoch, train_loader, run

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        if epoch >= self.start_epoch:
            self.swa.update(trainer.model)

    def on_fit_end(self, trainer) -> None:
        if self.swa.n_averaged == 0:
            return
        self.train_loader.set_epoch(trainer.cfg.epochs)      # a pass no training epoch has seen
        self.swa.recalibrate_bn((x for x, _ in self.train_loader), trainer.device)
        save_weights(self.run, trainer, "swa", self.swa.module, epoch=trainer.state.epoch,
                     n_averaged=self.swa.n_averaged)

    def trained_models(self) -> dict[str, nn.Module]:
        return {"swa": self.swa.module} if self.swa.n_averaged else {}

    def state_dict(self) -> dict:
        return self.swa.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.swa.load_state_dict(state)


__all__ = ["SWACallback"]
