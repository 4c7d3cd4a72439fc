"""Turn a model spec into a module, and measure it: parameters, the budget check, a summary, FLOPs."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torchinfo
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifarkit.errors import BudgetError
from cifarkit.models.fastnet import FastNet
from cifarkit.models.resnet import ResNet
from cifarkit.models.specs import FastNetSpec, ResNetSpec
from cifarkit.models.trainable import TrainableModel

BUILDERS = {"resnet": ResNet, "fastnet": FastNet}

InputSize = tuple[int, ...]


def build_model(spec: ResNetSpec | FastNetSpec, num_classes: int = 10) -> TrainableModel:
    """The model a spec describes, freshly initialized (a FastNet still needs `prepare`). The spec's
    `arch` is one of BUILDERS: recipes validate it (`config.MODEL_SPECS`) before a spec exists."""
    return BUILDERS[spec.arch](spec, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Sum of p.numel() over the model's parameters (frozen ones too, unless trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def check_budget(model: nn.Module, budget: int, allow_over: bool = False) -> int:
    """The model's parameter count; BudgetError if it exceeds `budget` (the most allowed) unless allow_over."""
    count = count_parameters(model)
    if count > budget and not allow_over:
        raise BudgetError(
            f"model has {count:,} parameters, over the budget of {budget:,} by {count - budget:,}; "
            "shrink the model or set allow_over_budget: true to train it anyway")
    return count


@dataclass
class ModelSummary:
    table: str             # torchinfo's layer table: output shape, parameters and multiply-adds per layer
    total_params: int
    trainable_params: int
    mult_adds: int         # multiply-adds of one forward pass at input_size


def summarize(model: nn.Module, input_size: InputSize = (1, 3, 32, 32), device: str = "cpu") -> ModelSummary:
    """torchinfo's layer table and totals for one forward pass; the model itself is left untouched
    (a copy runs)."""
    probe = copy.deepcopy(model).to(device).eval()
    # Hiding torchinfo's "(recursive)" rows drops the containers a model re-enters (FastNet's
    # conv and norm lists, used in turn) and keeps the layers inside them.
    stats = torchinfo.summary(probe, input_size=input_size, depth=getattr(model, "summary_depth", TrainableModel.summary_depth),
                              device=device, verbose=0, col_names=("output_size", "num_params", "mult_adds"),
                              row_settings=("var_names", "hide_recursive_layers"))
    return ModelSummary(table=str(stats), total_params=int(stats.total_params),
                        trainable_params=int(stats.trainable_params), mult_adds=int(stats.total_mult_adds))


def _count_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return int(counter.get_total_flops())


def flops_per_image(model: nn.Module, input_size: InputSize = (1, 3, 32, 32)) -> int:
    """FLOPs (2 per multiply-add) of one forward pass per image, in eval mode, on the model's device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()  # no BN statistics update, no dropout
    try:
        with torch.no_grad():
            flops = _count_flops(model, torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
    return flops // input_size[0]
