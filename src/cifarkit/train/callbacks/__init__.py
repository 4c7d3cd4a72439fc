"""Training callbacks, and the one place that decides which a recipe gets and in what order."""

from __future__ import annotations

from torch import nn

from cifarkit.config import Recipe
from cifarkit.rundir import RunDir
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.callbacks.best import BestModel, EarlyStopping
from cifarkit.train.callbacks.checkpoints import Checkpoints
from cifarkit.train.callbacks.ema import EMACallback
from cifarkit.train.callbacks.lookahead import LookaheadCallback
from cifarkit.train.callbacks.metrics_log import MetricsLog
from cifarkit.train.callbacks.progress import Progress
from cifarkit.train.callbacks.swa import SWACallback
from cifarkit.train.callbacks.tensorboard_log import TensorBoardLog
from cifarkit.train.callbacks.validation import Validation
from cifarkit.train.optim import swa_start_epoch


def build_callbacks(recipe: Recipe, model: nn.Module, *, train_loader, val_loader, steps_per_epoch: int,
                    run: RunDir | None, progress: bool = True) -> list[Callback]:
    """The callbacks of `recipe`, in the order their hooks must run.

    Why this order: validation fills the epoch record before selection and early stopping read it;
    the EMA is updated before the lookahead moves the live weights; the lookahead hands back its
    slow weights before `final.pt` is saved; files are written last, `last.pt` after everything
    else has updated its state. Without a run directory (benchmarks) nothing is written, but
    everything that changes the trained model still runs.
    """
    cfg = recipe.train
    callbacks: list[Callback] = []
    if val_loader is not None:
        callbacks.append(Validation(val_loader))
    if cfg.ema_decay > 0:
        callbacks.append(EMACallback(model, cfg.ema_decay, val_loader, run,
                                     average_buffers=cfg.ema_buffers == "average", keep=cfg.ema_keep))
    if cfg.lookahead_every:
        callbacks.append(LookaheadCallback(model, cfg.lookahead_every, cfg.epochs * steps_per_epoch))
    swa_from = swa_start_epoch(cfg)
    if swa_from is not None:
        callbacks.append(SWACallback(model, swa_from, train_loader, run))
    if val_loader is not None:
        callbacks.append(BestModel(run))
        if cfg.early_stopping_patience:
            callbacks.append(EarlyStopping(cfg.early_stopping_patience))
    if run is not None:
        callbacks += [MetricsLog(run), TensorBoardLog(run)]
    if progress:
        callbacks.append(Progress())
    if run is not None:
        callbacks.append(Checkpoints(run))
    return callbacks


__all__ = ["Callback", "build_callbacks", "BestModel", "Checkpoints", "EarlyStopping", "EMACallback",
           "LookaheadCallback", "MetricsLog", "Progress", "SWACallback", "TensorBoardLog", "Validation"]
