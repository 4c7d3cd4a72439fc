"""What a step does when its loss or gradients are NaN or infinite: stop the run with a message
that says where it can be resumed from (`on_nonfinite: stop`), or skip the step, restore the BN
statistics it touched and halve the learning rate from then on (`on_nonfinite: skip`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cifarkit.errors import TrainingDiverged


class NonFiniteError(TrainingDiverged):
    """The loss or the gradients became NaN or infinite during a step."""


class NonFiniteGuard:
    def __init__(self, policy: str, device: torch.device, scaled: bool):
        self.policy = policy
        # fp16 loss scaling meets infinite gradients on purpose (the scaler skips those steps itself)
        self.check_gradients = not scaled
        # A check syncs the device: every step on the CPU (free) or when skipping; else every 25 steps.
        self.every = 1 if (device.type == "cpu" or policy == "skip") else 25

    def snapshot(self, model: nn.Module) -> list[tuple[Tensor, Tensor]] | None:
        """The floating buffers a skipped step must restore (BN running statistics), or None."""
        if self.policy != "skip":
            return None
        return [(b, b.clone()) for b in model.buffers() if b.is_floating_point()]

    def finite(self, step: int, loss: Tensor, grad_norm: Tensor | None) -> bool:
        if step % self.every:
            return True
        ok = torch.isfinite(loss)
        if grad_norm is not None and self.check_gradients:
            ok = ok & torch.isfinite(grad_norm)
        return bool(ok)

    @staticmethod
    def restore(snapshot: list[tuple[Tensor, Tensor]]) -> None:
        if snapshot:
            live, saved = map(list, zip(*snapshot))
            torch._foreach_copy_(live, saved)


__all__ = ["NonFiniteError", "NonFiniteGuard"]
