"""The callback protocol: what the training loop tells the features around it.

The loop (`train.trainer.Trainer`) knows steps and epochs; everything else -- weight averages,
validation, model selection, early stopping, files, progress -- is a callback. Adding a feature
means adding a callback, not another `if` in the loop.

Hooks are called on every callback in list order (see `train.callbacks.build_callbacks` for the
order and why it matters). A callback with state that a checkpoint must carry names its entry
with `state_key`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from cifarkit.train.trainer import Trainer


class Callback:
    state_key: str | None = None      # the checkpoint entry of a callback with state

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of this process (a fresh run or a resumed one)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first step of `epoch` (0-based), or before the remaining steps of a resumed one."""

    def on_step_end(self, trainer: Trainer, completed_steps: int) -> None:
        """After an optimizer step; `completed_steps` counts it. Not called for a skipped step."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict) -> None:
        """After the last step of `epoch`; `record` is the epoch's metrics line, which callbacks extend."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """A signal arrived; the loop stops after this (the state holds the interrupted epoch's sums)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Training finished (all epochs, or an early stop)."""

    def trained_models(self) -> dict[str, nn.Module]:
        """Models this callback produced besides the live one (e.g. {"ema": ...}), for evaluation."""
        return {}

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


__all__ = ["Callback"]
