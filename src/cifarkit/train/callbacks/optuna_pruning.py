"""Report each epoch's validation accuracy to an Optuna trial and stop the run when its pruner
says so. Added by `cifarkit sweep` after the default callbacks (not one of `build_callbacks`'),
so the epoch's checkpoint is written before a pruned trial stops: its run directory stays a
normal run that `cifarkit train --resume` can continue."""

from __future__ import annotations

import optuna

from cifarkit.train.callbacks.base import Callback


class OptunaPruning(Callback):
    def __init__(self, trial: optuna.Trial, metric: str = "val_acc"):
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        if self.metric not in record:
            return
        value = record[self.metric]
        self.trial.report(value, step=epoch + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} ({self.metric} {value:.4f})")


__all__ = ["OptunaPruning"]
