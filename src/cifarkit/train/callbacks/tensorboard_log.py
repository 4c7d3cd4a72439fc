"""TensorBoard event files under `RUN/tensorboard/`: every number of each epoch's record."""

from __future__ import annotations

from cifarkit.rundir import RunDir
from cifarkit.train.callbacks.base import Callback


class TensorBoardLog(Callback):
    def __init__(self, run: RunDir):
        self.run = run
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter   # imports tensorboard: only runs that log pay
        self.writer = SummaryWriter(log_dir=str(self.run.tensorboard))

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def on_interrupt(self, trainer) -> None:
        self._close()

    def on_fit_end(self, trainer) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["TensorBoardLog"]
