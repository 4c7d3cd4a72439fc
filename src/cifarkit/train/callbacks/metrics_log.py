"""`metrics.jsonl`: one JSON line per epoch, appended (and fsynced) after the epoch's other
callbacks have added their numbers; a resumed run first drops lines its checkpoint does not cover."""

from __future__ import annotations

import json

from cifarkit.fsio import append_jsonl, read_jsonl, write_text
from cifarkit.rundir import RunDir
from cifarkit.train.callbacks.base import Callback


class MetricsLog(Callback):
    def __init__(self, run: RunDir):
        self.run = run

    def on_fit_start(self, trainer) -> None:
        if not self.run.metrics.exists():
            return
        # Lines of epochs after the checkpoint were written before a crash; they will be redone.
        kept = [r for r in read_jsonl(self.run.metrics) if r.get("epoch", 0) <= trainer.state.epoch]
        write_text(self.run.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        append_jsonl(self.run.metrics, record)


__all__ = ["MetricsLog"]
