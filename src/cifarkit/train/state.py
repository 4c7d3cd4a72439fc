"""Where a training run stands: the counters and running sums a checkpoint must hold to resume
exactly (bit for bit on the CPU) from any step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    epoch: int = 0                # completed epochs
    batch: int = 0                # completed batches of the current epoch (non-zero only after an interrupt)
    step: int = 0                 # completed optimizer steps
    best_val_acc: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0           # epochs since the last validation improvement
    stopped_early: bool = False
    lr_factor: float = 1.0        # lowered after skipped non-finite steps (on_nonfinite: skip)
    skipped_steps: int = 0
    train_seconds: float = 0.0
    partial: dict = field(default_factory=dict)   # running sums of an interrupted epoch


__all__ = ["TrainState"]
