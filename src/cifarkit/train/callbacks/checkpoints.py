"""The run directory's checkpoints: `last.pt` (the full training state, rewritten atomically after
every epoch and when a signal arrives) and the weights files the other callbacks produce."""

from __future__ import annotations

from torch import nn

from cifarkit.config import recipe_to_dict
from cifarkit.rundir import RunDir
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.checkpoint import save_checkpoint


def save_weights(run: RunDir | None, trainer, kind: str, module: nn.Module, **meta) -> None:
    """Write `checkpoints/<kind>.pt` (weights, recipe, normalization, `meta`); nothing without a run."""
    if run is None:
        return
    save_checkpoint(run.weights(kind), {"kind": kind, "model": module.state_dict(),
                                        "recipe": recipe_to_dict(trainer.recipe),
                                        "normalization": trainer.normalization, **meta})


class Checkpoints(Callback):
    """`last.pt` after every epoch (after every other callback has updated its state) and on an
    interrupt; `final.pt` when training ends."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        save_checkpoint(self.run.last, trainer.state_dict())

    def on_interrupt(self, trainer) -> None:
        save_checkpoint(self.run.last, trainer.state_dict())

    def on_fit_end(self, trainer) -> None:
        save_weights(self.run, trainer, "final", trainer.model, epoch=trainer.state.epoch)

    def resume_hint(self) -> str:
        return f"checkpoint written; resume with: cifarkit train --resume {self.run.root}"

    def last_good(self, trainer) -> str:
        """The checkpoint a failed run can be resumed from, for error messages."""
        if not self.run.last.exists():
            return "none (no epoch finished yet)"
        return f"{self.run.last} (after epoch {trainer.state.epoch})"


__all__ = ["Checkpoints", "save_weights"]
