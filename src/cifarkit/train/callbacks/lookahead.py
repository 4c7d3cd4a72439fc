"""airbench's lookahead weight average as a callback (the arithmetic is `train.averaging.Lookahead`)."""

from __future__ import annotations

from torch import nn

from cifarkit.train.averaging import Lookahead
from cifarkit.train.callbacks.base import Callback


class LookaheadCallback(Callback):
    """airbench's lookahead: every `every` steps the live weights move to a slow average; at the
    end the model keeps the slow weights. Must run before anything saves or evaluates the final model."""

    state_key = "lookahead"

    def __init__(self, model: nn.Module, every: int, total_steps: int):
        self.lookahead = Lookahead(model, every, total_steps)

    def on_step_end(self, trainer, completed_steps: int) -> None:
        self.lookahead.step(trainer.model, completed_steps)

    def on_fit_end(self, trainer) -> None:
        self.lookahead.finish(trainer.model)

    def state_dict(self) -> dict:
        return self.lookahead.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.lookahead.load_state_dict(state)


__all__ = ["LookaheadCallback"]
