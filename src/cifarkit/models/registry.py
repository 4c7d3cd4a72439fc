"""Turn a model spec into a module, and measure it: parameters, the budget check, a summary, FLOPs."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifarkit.errors import BudgetError, ConfigError
from cifarkit.models.fastnet import FastNet
from cifarkit.models.resnet import ResNet
from cifarkit.models.specs import FastNetSpec, ResNetSpec

BUILDERS = {"resnet": ResNet, "fastnet": FastNet}

InputSize = tuple[int, ...]


def build_model(spec: ResNetSpec | FastNetSpec, num_classes: int = 10) -> nn.Module:
    """The nn.Module a spec describes, freshly initialized (a FastNet still needs `init_whitening`)."""
    arch = getattr(spec, "arch", None)
    if arch not in BUILDERS:
        raise ConfigError(f"unknown model.arch '{arch}'; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[arch](spec, num_classes)


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
    table: str             # a readable layer table (torchinfo's when installed)
    total_params: int
    trainable_params: int
    mult_adds: int         # multiply-adds of one forward pass at input_size


def summarize(model: nn.Module, input_size: InputSize = (1, 3, 32, 32), device: str = "cpu") -> ModelSummary:
    """A layer table and totals for one forward pass; the model itself is left untouched (a copy runs).

    Uses torchinfo when it is installed; otherwise a table of our own, with multiply-adds taken
    as half of torch's FLOP count (convs and linears; torchinfo also counts BN, a fraction of a percent).
    """
    probe = copy.deepcopy(model).to(device).eval()
    try:
        import torchinfo
    except ImportError:
        return _fallback_summary(probe, input_size, device)
    stats = torchinfo.summary(probe, input_size=input_size, depth=3, device=device, verbose=0)
    return ModelSummary(table=str(stats), total_params=int(stats.total_params),
                        trainable_params=int(stats.trainable_params), mult_adds=int(stats.total_mult_adds))


def _fallback_summary(model: nn.Module, input_size: InputSize, device: str, depth: int = 3) -> ModelSummary:
    rows: list[tuple[str, str, str, int]] = []  # name, type, output shape, params
    hooks = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            shape = str(list(output.shape)) if isinstance(output, torch.Tensor) else "-"
            rows.append((name, type(module).__name__, shape, count_parameters(module)))
        return hook

    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            hooks.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            flops = _count_flops(model, torch.zeros(input_size, device=device))
    finally:
        for h in hooks:
            h.remove()

    width = max([len(f"{n} ({t})") for n, t, _, _ in rows] + [20])
    lines = [f"{'Layer (type)':<{width}}  {'Output shape':<22}  {'Params':>12}", "=" * (width + 38)]
    # Hooks fire when a module finishes, so parents come after children; sort by module order instead.
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for name, kind, shape, params in sorted(rows, key=lambda r: order[r[0]]):
        lines.append(f"{name + ' (' + kind + ')':<{width}}  {shape:<22}  {params:>12,}")
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    mult_adds = flops // 2
    lines += ["=" * (width + 38), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}", f"Total mult-adds (M): {mult_adds / 1e6:.2f}"]
    return ModelSummary(table="\n".join(lines), total_params=total, trainable_params=trainable, mult_adds=mult_adds)


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
