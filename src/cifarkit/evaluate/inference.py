"""`infer`: the one inference path. Validation during training, evaluation, benchmarks and prediction
all score images through here, with the test-time views of `evaluate.tta` and the precision mapping
of `cifarkit.device`.

Scores are averaged over the views by weight: softmax probabilities for `output="probs"` (what
metrics, ensembles and submissions use: averaged probabilities are still probabilities), raw logits
for `output="logits"` (what the validation loss and airbench's TTA use).

Selective TTA (`fraction` < 1): every image first gets the two unshifted views (identity and
flip); only the `fraction` of each batch whose two-view prediction is least confident (smallest gap
between the top two scores) also gets the remaining views, weighted as in the full mode. On the
speed-run models most images are predicted with a wide margin that extra views do not overturn,
so the shifted views are spent where they can matter.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable

import torch
from torch import Tensor, nn

from cifarkit.device import autocast
from cifarkit.errors import ConfigError, DataError
from cifarkit.evaluate.tta import check_mode, mode_temperature, tta_views

OUTPUTS = ("probs", "logits")
Stats = tuple[Sequence[float], Sequence[float]]     # (mean, std) per channel


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off and BN on its running statistics for the duration; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def image_batches(data: Tensor | Iterable, batch_size: int) -> Iterator[Tensor]:
    """Image batches from a tensor of images (split into `batch_size` chunks) or an iterable of
    image batches or (images, labels) batches."""
    if isinstance(data, Tensor):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        yield from data.split(batch_size)
        return
    for batch in data:
        if isinstance(batch, Tensor):
            yield batch
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            yield batch[0]
        else:
            raise DataError(f"expected batches of images or (images, labels), got {type(batch).__name__}")


def score_batch(model: nn.Module, x: Tensor, *, mode: str = "none", precision: str = "fp32",
                fraction: float = 1.0, output: str = "probs", stats: Stats | None = None) -> Tensor:
    """Weighted view-average scores (B, C), float32 on x's device, for one batch already on the
    model's device. The caller holds the model in eval mode and gradients off. `stats` is the
    (mean, std) the batch was normalized with, for views that change colours (default CIFAR-10's).
    Probabilities are softmax(logits / T) with the mode's temperature T (1 but for "views004")."""
    check_mode(mode)
    if output not in OUTPUTS:
        raise ConfigError(f"unknown inference output '{output}'; choose {', '.join(OUTPUTS)}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the selective TTA fraction must be in (0, 1], got {fraction}")
    to_score = _scorer(output, mode_temperature(mode))
    context = autocast(x.device, precision)

    def views_of(batch: Tensor, view_mode: str) -> list[tuple[Tensor, float]]:
        return tta_views(batch, view_mode, stats)

    def weighted_sum(views: list[tuple[Tensor, float]]) -> Tensor:
        total = None
        for view, weight in views:
            with context:
                out = model(view)
            term = to_score(out.float()) * weight     # accumulate in float32 whatever ran the forward
            total = term if total is None else total + term
        return total

    if fraction >= 1.0 or mode in ("none", "flip"):       # nothing beyond the unshifted views
        return weighted_sum(views_of(x, mode))
    if mode == "views004":
        raise ConfigError("selective TTA needs a mode whose identity and flip views weigh the same; "
                          "views004 weighs the identity twice")
    return _selective(x, mode, fraction, weighted_sum, views_of)


def _scorer(output: str, temperature: float) -> Callable[[Tensor], Tensor]:
    if output == "logits":
        return lambda logits: logits
    if temperature == 1.0:
        return lambda logits: logits.softmax(dim=-1)
    return lambda logits: (logits / temperature).softmax(dim=-1)


def _selective(x: Tensor, mode: str, fraction: float,
               weighted_sum: Callable[[list[tuple[Tensor, float]]], Tensor],
               views_of: Callable[[Tensor, str], list[tuple[Tensor, float]]]) -> Tensor:
    """Two-view scores for every image; the full set of views for the least confident `fraction`.

    Every mode's first two views are the image and its mirror at equal weights, so the two-view
    average is the "flip" mode; the other views are built for the picked images only.
    """
    total = weighted_sum(views_of(x, "flip"))
    top2 = total.topk(2, dim=-1).values if total.shape[-1] > 1 else torch.cat([total, total], dim=-1)
    margin = top2[:, 0] - top2[:, 1]
    pick = margin.topk(math.ceil(fraction * len(x)), largest=False).indices
    views = views_of(x[pick], mode)
    unshifted_weight = sum(w for _, w in views[:2])
    total[pick] = total[pick] * unshifted_weight + weighted_sum(views[2:])
    return total


@torch.no_grad()
def infer(model: nn.Module, data: Tensor | Iterable, *, mode: str = "none", device: str | torch.device = "cpu",
          precision: str = "fp32", batch_size: int = 1000, fraction: float = 1.0, output: str = "probs",
          stats: Stats | None = None) -> Tensor:
    """Scores (N, C), float32 on the CPU, for normalized images: a tensor (split into `batch_size`
    chunks) or any iterable of image batches or (images, labels) batches. The model must already
    be on `device`; batches are moved there. The model runs in eval mode with gradients off and
    its training flag is restored afterwards."""
    device = torch.device(device)
    check_mode(mode)
    scores = []
    with eval_mode(model):
        for x in image_batches(data, batch_size):
            x = x.to(device, non_blocking=True)
            scores.append(score_batch(model, x, mode=mode, precision=precision, fraction=fraction,
                                      output=output, stats=stats).cpu())
    if not scores or sum(len(s) for s in scores) == 0:
        raise DataError("there are no images to predict")
    return torch.cat(scores)


__all__ = ["OUTPUTS", "eval_mode", "image_batches", "score_batch", "infer"]
