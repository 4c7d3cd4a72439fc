"""Optimizers and per-step learning-rate schedules built from a recipe's `train:` section.

The schedule is a pure function of the step (`LRSchedule.lr_at`), so a run resumed at step k sets
the same learning rate as the uninterrupted run without saving any scheduler state. Parameter
groups may carry an `lr_scale`: the scheduled rate is multiplied by it for that group.
"""

from __future__ import annotations

import math
import torch
from torch import Tensor, nn

from cifarkit.config import TrainConfig
from cifarkit.errors import ConfigError
from cifarkit.train.muon import Muon

# torch.optim.lr_scheduler.OneCycleLR defaults, which reference 001 used unchanged.
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_BASE_MOMENTUM = 0.85
ONECYCLE_MAX_MOMENTUM = 0.95

_EPS = 1e-9   # guards fraction * count products against float rounding (0.7 * 10 = 7.000000000000001)


# -- parameter groups ----------------------------------------------------------------------------

def _named_groups(model: nn.Module, param_groups: dict | None) -> list[tuple[str, list[Tensor], dict]]:
    """(name, trainable params, overrides) for each requested group, plus 'default' for the rest."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    seen: set[int] = set()
    groups = []
    for name, entry in (param_groups or {}).items():
        if isinstance(entry, dict):
            overrides = {k: v for k, v in entry.items() if k != "params"}
            params = list(entry.get("params", []))
        else:
            overrides, params = {}, list(entry)
        kept = []
        for p in params:
            if not p.requires_grad:
                continue          # frozen (e.g. whitening filters, BN weights fixed at 1)
            if id(p) in seen:
                raise ConfigError(f"a parameter appears in more than one optimizer group (again in '{name}')")
            seen.add(id(p))
            kept.append(p)
        groups.append((name, kept, overrides))
    rest = [p for p in trainable if id(p) not in seen]
    groups.append(("default", rest, {}))
    return [g for g in groups if g[1]]


def _split(name: str, params: list[Tensor], overrides: dict, cfg: TrainConfig) -> list[dict]:
    """Split a named group by the rules that depend on tensor shape: no decay on norms and biases
    (ndim <= 1) unless the group sets its own weight_decay; Muon for conv filters (ndim 4)."""
    buckets: dict[tuple[bool, bool], list[Tensor]] = {}
    for p in params:
        no_decay = cfg.no_decay_norm_bias and "weight_decay" not in overrides and p.ndim <= 1
        muon = cfg.optimizer == "muon" and bool(overrides.get("muon", p.ndim == 4))
        buckets.setdefault((no_decay, muon), []).append(p)
    out = []
    for (no_decay, muon), ps in buckets.items():
        lr_scale = float(overrides.get("lr_scale", 1.0))
        if muon and cfg.muon_lr is not None:   # filters follow the same schedule shape at their own peak
            lr_scale *= cfg.muon_lr / cfg.lr
        group = {**overrides, "params": ps, "lr_scale": lr_scale, "lr": cfg.lr * lr_scale}
        group["name"] = name + ("/no_decay" if no_decay else "") + ("/muon" if muon else "")
        if no_decay:
            group["weight_decay"] = 0.0
        if cfg.optimizer == "muon":
            group["muon"] = muon
            if muon:
                group["ns_steps"] = cfg.muon_ns_steps
                if cfg.muon_momentum is not None:
                    group["momentum"] = cfg.muon_momentum
        out.append(group)
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig, param_groups: dict | None = None) -> torch.optim.Optimizer:
    """SGD, AdamW or Muon over the model's trainable parameters.

    `param_groups` maps a group name to a list of parameters, or to
    {"params": [...], "lr_scale": 64.0, "weight_decay": 0.0, ...}: `lr_scale` multiplies the scheduled
    learning rate, any other key overrides the optimizer default for that group. Parameters in no
    group form the group 'default'. Every torch param group keeps its `name` and `lr_scale`.
    """
    groups = [g for name, ps, over in _named_groups(model, param_groups) for g in _split(name, ps, over, cfg)]
    if not groups:
        raise ConfigError("the model has no trainable parameters to optimize")
    if cfg.optimizer == "sgd":
        if cfg.nesterov and (cfg.momentum <= 0 or cfg.dampening != 0):
            raise ConfigError("'train.nesterov' needs 'train.momentum' > 0 and 'train.dampening: 0'")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.nesterov and (cfg.momentum <= 0 or (cfg.muon_momentum is not None and cfg.muon_momentum <= 0)):
        raise ConfigError("'train.nesterov' needs 'train.momentum' (and 'train.muon_momentum') > 0")
    return Muon(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, dampening=cfg.dampening,
                weight_decay=cfg.weight_decay)                                                  # muon


# -- learning-rate schedule ----------------------------------------------------------------------

def _cos_anneal(start: float, end: float, pct: float) -> float:
    """torch OneCycleLR's cosine interpolation from start (pct 0) to end (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def swa_start_epoch(cfg: TrainConfig) -> int | None:
    """First epoch (0-based) whose end is averaged into SWA: ceil(swa_start * epochs), at most the
    last epoch so that a run with SWA on always averages at least one snapshot; None when off."""
    if cfg.swa_start <= 0:
        return None
    return min(math.ceil(cfg.swa_start * cfg.epochs - _EPS), cfg.epochs - 1)


class LRSchedule:
    """Per-step learning-rate multiplier schedule, stateless: lr_at(step) is a pure function of the step,
    so resuming at step k needs no scheduler state.

    Stepped per batch; `total_steps = epochs * steps_per_epoch`; steps outside [0, total_steps - 1]
    are clamped. With `lr_update: epoch` every step of an epoch gets the rate of the epoch's first
    step, as a torch scheduler stepped once per epoch gives. Schedules:
      cosine    linear warmup from warmup_start_lr to lr over warmup_epochs, then cosine from lr to
                min_lr over the remaining steps (as torch's LinearLR then CosineAnnealingLR); with
                decay_start_epoch / decay_end_epoch the cosine runs between those epochs instead,
                at lr before (once the warmup is over) and min_lr after
      linear    the same warmup, then a straight line from lr to min_lr (same decay window)
      constant  the same warmup, then lr
      step      lr * step_gamma ** (epoch // step_epochs)
      onecycle  torch's OneCycleLR(max_lr=lr, pct_start=onecycle_pct_start, anneal_strategy="cos",
                div_factor=25, final_div_factor=1e4, three_phase=False), momentum cycled 0.95 -> 0.85 -> 0.95
    With swa_lr set (and swa_start > 0), steps from int(swa_start * total_steps) on use the constant swa_lr.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        if steps_per_epoch < 1:
            raise ConfigError("an epoch must have at least one batch; lower 'train.batch_size'")
        self.cfg = cfg
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warms = cfg.schedule in ("cosine", "linear", "constant")
        self.warmup_steps = min(round(cfg.warmup_epochs * self.steps_per_epoch), self.total_steps) if warms else 0
        self.swa_from_step = (int(cfg.swa_start * self.total_steps + _EPS)
                              if cfg.swa_lr is not None and cfg.swa_start > 0 else None)
        # The decay window in steps (fractional steps are fine: only ratios are taken).
        self.decay_from = (self.warmup_steps if cfg.decay_start_epoch is None
                           else cfg.decay_start_epoch * self.steps_per_epoch)
        self.decay_to = (self.total_steps if cfg.decay_end_epoch is None
                         else cfg.decay_end_epoch * self.steps_per_epoch)
        # OneCycleLR phase ends, as torch computes them.
        self._phase1_end = float(cfg.onecycle_pct_start * self.total_steps) - 1
        self._phase2_end = float(self.total_steps - 1)

    def _clamp(self, step: int) -> int:
        """The step the rate is computed at: clamped into training, held at the epoch's first step
        with `lr_update: epoch`."""
        step = min(max(int(step), 0), self.total_steps - 1)
        if self.cfg.lr_update == "epoch":
            step -= step % self.steps_per_epoch
        return step

    def lr_at(self, step: int) -> float:
        """Absolute learning rate for a group with lr_scale 1 at this (0-based) optimizer step."""
        step = self._clamp(step)
        if self.swa_from_step is not None and step >= self.swa_from_step:
            return float(self.cfg.swa_lr)
        return self._scheduled(step)

    def _scheduled(self, step: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "onecycle":
            return self._onecycle(step, cfg.lr / ONECYCLE_DIV_FACTOR, cfg.lr,
                                  cfg.lr / ONECYCLE_DIV_FACTOR / ONECYCLE_FINAL_DIV_FACTOR)
        if cfg.schedule == "step":
            return cfg.lr * cfg.step_gamma ** ((step // self.steps_per_epoch) // cfg.step_epochs)
        w = self.warmup_steps
        if step < w:
            return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / w
        span = self.decay_to - self.decay_from
        frac = min(max((step - self.decay_from) / span, 0.0), 1.0) if span > 0 else 0.0
        if cfg.schedule == "cosine":
            return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac)) / 2
        if cfg.schedule == "linear":
            return cfg.lr + (cfg.min_lr - cfg.lr) * frac
        return cfg.lr                                                   # constant

    def _onecycle(self, step: int, start: float, peak: float, end: float) -> float:
        if step <= self._phase1_end:
            # a warmup shorter than one step (tiny runs) would divide by zero; start at the peak
            return _cos_anneal(start, peak, step / self._phase1_end if self._phase1_end > 0 else 1.0)
        return _cos_anneal(peak, end, (step - self._phase1_end) / (self._phase2_end - self._phase1_end))

    def momentum_at(self, step: int) -> float | None:
        """OneCycle's cycled momentum (0.95 -> 0.85 -> 0.95); None for the other schedules."""
        if self.cfg.schedule != "onecycle":
            return None
        return self._onecycle(self._clamp(step), ONECYCLE_MAX_MOMENTUM, ONECYCLE_BASE_MOMENTUM,
                              ONECYCLE_MAX_MOMENTUM)

    def group_lr(self, group: dict, step: int, scheduled: float) -> float:
        """A group's lr at `step`: the scheduled lr x its lr_scale; a group with
        `linear_to_zero_steps: N` instead falls in a straight line from lr x lr_scale at step 0 to 0
        at step N (and stays there)."""
        scale = group.get("lr_scale", 1.0)
        steps = group.get("linear_to_zero_steps")
        if steps is None:
            return scheduled * scale
        return self.cfg.lr * scale * max(0.0, 1.0 - max(int(step), 0) / steps) if steps > 0 else 0.0

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr (`group_lr`) and OneCycle's momentum, as torch does: betas[0] for
        Adam-style groups, else momentum. Returns lr_at(step)."""
        lr = self.lr_at(step)
        momentum = self.momentum_at(step)
        for group in optimizer.param_groups:
            group["lr"] = self.group_lr(group, step, lr)
            if momentum is not None:
                if "betas" in group:
                    group["betas"] = (momentum, *tuple(group["betas"])[1:])
                elif "momentum" in group:
                    group["momentum"] = momentum
        return lr


__all__ = ["build_optimizer", "LRSchedule", "swa_start_epoch"]
