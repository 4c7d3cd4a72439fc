"""Weight averages of a training model: a per-step exponential moving average (EMA) and an
equal-weight average of end-of-epoch snapshots (SWA) with BatchNorm recalibration.

Each keeps its own float32 copy of the model on the model's device (`.module`, eval-ready, no
gradients). Their state dicts hold only tensors and numbers, so checkpoints load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from cifarkit.errors import ConfigError


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile's wrapper, so tensor names line up with the copy."""
    return getattr(model, "_orig_mod", model)


def _frozen_copy(model: nn.Module) -> nn.Module:
    module = copy.deepcopy(_unwrap(model)).float().eval()
    module.requires_grad_(False)
    return module


def _tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


class _Averager:
    """Pairs the averaged copy's tensors with a live model's, split into floating and integer ones."""

    def __init__(self, model: nn.Module):
        self.module = _frozen_copy(model)
        self._names = [name for name, _ in _tensors(self.module)]

    def _pairs(self, model: nn.Module):
        own = _tensors(self.module)
        live = _tensors(_unwrap(model))
        if [n for n, _ in live] != self._names:
            raise ValueError("the model passed to update() does not have the averaged model's tensors")
        floats = [(a, b.detach()) for (_, a), (_, b) in zip(own, live) if a.is_floating_point()]
        others = [(a, b.detach()) for (_, a), (_, b) in zip(own, live) if not a.is_floating_point()]
        avg_f = [a for a, _ in floats]
        live_f = [b if b.dtype == a.dtype else b.to(a.dtype) for a, b in floats]
        return avg_f, live_f, [a for a, _ in others], [b for _, b in others]


class EMA(_Averager):
    """Exponential moving average of the weights: ema = d * ema + (1 - d) * model.

    With `average_buffers` (the default) every floating tensor is averaged, BN running mean/var
    included. Without it only the parameters are averaged and every buffer is copied from the live
    model at each update, so the averaged copy normalizes with the live model's current statistics
    (what references 000 and 004 did: their EMA kept shadow parameters only). Integer buffers
    (num_batches_tracked) are always copied.
    """

    def __init__(self, model: nn.Module, decay: float, average_buffers: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        super().__init__(model)
        self.decay = float(decay)
        self.average_buffers = bool(average_buffers)
        self._param_ids = {id(p) for p in self.module.parameters()}
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        avg_f, live_f, avg_i, live_i = self._pairs(model)
        if not self.average_buffers:
            # Floating buffers join the copied ones; only parameters are averaged.
            copied = [(a, b) for a, b in zip(avg_f, live_f) if id(a) not in self._param_ids]
            kept = [(a, b) for a, b in zip(avg_f, live_f) if id(a) in self._param_ids]
            avg_f, live_f = [a for a, _ in kept], [b for _, b in kept]
            avg_i, live_i = avg_i + [a for a, _ in copied], live_i + [b for _, b in copied]
        if avg_f:
            torch._foreach_lerp_(avg_f, live_f, 1.0 - self.decay)
        if avg_i:
            torch._foreach_copy_(avg_i, live_i)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates,
                "decay": self.decay, "average_buffers": self.average_buffers}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


class SWA(_Averager):
    """Equal-weight average of the weights at the end of chosen epochs (stochastic weight averaging),
    then BatchNorm statistics recalibrated by a pass over training data.

    Until `recalibrate_bn` runs, buffers hold the latest snapshot's (running statistics of an
    averaged network must be recomputed, not averaged).
    """

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        avg_f, live_f, avg_i, live_i = self._pairs(model)
        params = {id(p) for p in self.module.parameters()}
        pairs = [(a, b) for a, b in zip(avg_f, live_f) if id(a) in params]
        buffers = [(a, b) for a, b in zip(avg_f, live_f) if id(a) not in params] + list(zip(avg_i, live_i))
        if pairs:
            avg_p, live_p = map(list, zip(*pairs))
            # mean_{n+1} = mean_n + (x - mean_n) / (n + 1); the first snapshot is copied exactly.
            torch._foreach_lerp_(avg_p, live_p, 1.0 / (self.n_averaged + 1))
        if buffers:
            avg_b, live_b = map(list, zip(*buffers))
            torch._foreach_copy_(avg_b, live_b)
        self.n_averaged += 1

    def recalibrate_bn(self, batches: Iterable[Tensor], device: torch.device | str | None = None) -> None:
        """Recompute BN running statistics on `batches` (normalized training images, no labels):
        reset, then a cumulative average over all batches (momentum=None), as
        torch.optim.swa_utils.update_bn does. An empty iterable leaves the statistics unchanged."""
        batches = iter(batches)
        first = next(batches, None)
        if first is None:
            return
        update_bn(itertools.chain([first], batches), self.module, device)
        self.module.eval()

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "n_averaged": self.n_averaged}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.n_averaged = int(state["n_averaged"])



class Lookahead:
    """The speed-run "lookahead" average: every `every` steps the slow copy moves toward the live
    weights, slow = decay * slow + (1 - decay) * live, and the live weights jump back to the slow copy.
    decay ramps up as 0.95**every * (step / total_steps)**3, so early training is barely slowed and
    late training is strongly averaged; `finish` leaves the model holding the slow weights.
    Applies to every floating tensor of the state dict (BN running statistics included).
    """

    def __init__(self, model: nn.Module, every: int, total_steps: int):
        self.every, self.total_steps = int(every), int(total_steps)
        self.slow = [t.detach().clone() for t in self._tensors(model)]

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        model = getattr(model, "_orig_mod", model)
        return [t for t in model.state_dict().values() if t.is_floating_point()]

    def decay_at(self, step: int) -> float:
        return 0.95 ** self.every * (step / self.total_steps) ** 3

    @torch.no_grad()
    def _sync(self, model: nn.Module, decay: float) -> None:
        live = self._tensors(model)
        torch._foreach_lerp_(self.slow, live, 1.0 - decay)
        torch._foreach_copy_(live, self.slow)

    def step(self, model: nn.Module, completed_steps: int) -> None:
        """Call after each optimizer step with the number of steps completed so far."""
        if completed_steps % self.every == 0:
            self._sync(model, self.decay_at(completed_steps))

    def finish(self, model: nn.Module) -> None:
        self._sync(model, 1.0)

    def state_dict(self) -> dict:
        return {"slow": list(self.slow)}

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self.slow, state["slow"]):
            mine.copy_(saved)


__all__ = ["EMA", "SWA", "Lookahead"]
