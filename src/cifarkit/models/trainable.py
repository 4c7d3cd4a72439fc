"""What the training loop may ask of a model, so that the loop knows no model by name.

  param_groups(train_cfg, steps_per_epoch)   optimizer groups beyond the default one
  prepare(train_images)                      data-dependent initialization before the first step
  set_epoch(epoch)                           per-epoch behaviour of the net itself

`train_cfg` is a recipe's `train:` section (`cifarkit.config.TrainConfig`); models read only the
few fields that concern how their own parameters are trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from cifarkit.config import TrainConfig


def scaled_group(params: list[nn.Parameter], scale: float, weight_decay: float) -> dict:
    """A group trained at `scale` x the scheduled learning rate, with weight decay divided by the
    same factor so that the per-step decay lr x wd is unchanged (the speed-run convention)."""
    return {"params": params, "lr_scale": scale, "weight_decay": weight_decay / scale}


class TrainableModel(nn.Module):
    """Base class of cifarkit's models: the defaults suit any network."""

    summary_depth = 3   # how deep `cifarkit summary`'s layer table goes: down to the layers that matter

    def param_groups(self, cfg: TrainConfig, steps_per_epoch: int) -> dict[str, dict]:
        """BatchNorm biases at `bias_lr_scale` x the learning rate when that is not 1."""
        if cfg.bias_lr_scale == 1.0:
            return {}
        biases = [m.bias for m in self.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None and m.bias.requires_grad]
        return {"norm_biases": scaled_group(biases, cfg.bias_lr_scale, cfg.weight_decay)}

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor) -> None:
        """Nothing to compute from the data by default. `train_images`: normalized float
        (N, 3, H, W), un-augmented, on the model's device."""

    def set_epoch(self, epoch: int) -> None:
        """No per-epoch behaviour by default."""


__all__ = ["TrainableModel", "scaled_group"]
