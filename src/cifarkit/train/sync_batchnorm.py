"""BatchNorm statistics over the images of all ranks (`train.sync_bn`).

On GPUs this is torch.nn.SyncBatchNorm. Its statistics kernels exist for CUDA only (torch raises
for CPU tensors, and DDP refuses it in a CPU model), so on CPUs -- gloo, where the tests run --
HostSyncBatchNorm computes the same statistics through a differentiable all_reduce: the
per-channel sum and count, then the sum of squared deviations from the global mean, in float64;
the all_reduce's backward gives every rank the gradient of the global statistics. Outside
training, or alone, it is BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """A sum over the ranks that gradients flow through: the gradient of each rank's input is the
    sum over the ranks of the gradients of the total (torch.distributed.nn's all_reduce, which
    torch has deprecated in favour of collectives without autograd)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class HostSyncBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU tensors (gloo). A class of its own, not a torch.nn.SyncBatchNorm:
    DDP refuses those in a CPU model."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()) or self._group_size() == 1:
            return super().forward(x)
        return self._forward_synced(x)

    def _group(self):
        return self.process_group or dist.group.WORLD

    def _group_size(self) -> int:
        return dist.get_world_size(self._group())

    def _forward_synced(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        xf = x.float()
        local = torch.cat([xf.sum(dims, dtype=torch.float64),
                           torch.tensor([x.numel() // channels], dtype=torch.float64)])
        total = _AllReduceSum.apply(local, self._group())
        count = total[channels].detach()
        mean = total[:channels] / count
        centered = xf - mean.to(torch.float32).view(shape)
        squares = _AllReduceSum.apply((centered * centered).sum(dims, dtype=torch.float64), self._group())
        var = squares / count
        y = centered * torch.rsqrt(var + self.eps).to(torch.float32).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        """As BatchNorm does: the unbiased variance, momentum or (momentum None) a cumulative average."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1).clamp_min(1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `model` synchronizes over all ranks, in place: torch.nn.SyncBatchNorm on
    GPUs, HostSyncBatchNorm on CPUs. The new layers keep the old ones' parameter and buffer
    tensors, so an optimizer built on them still holds them."""
    if device.type != "cpu":
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        converted = _convert_host(model)
    if converted is not model:
        raise TypeError("convert_sync_batchnorm needs a model that contains its BatchNorm layers")
    return model


def _convert_host(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm):
        synced = HostSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.running_mean, synced.running_var = module.running_mean, module.running_var
        synced.num_batches_tracked = module.num_batches_tracked
        synced.training = module.training
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_host(child))
    return module


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


__all__ = ["HostSyncBatchNorm", "convert_sync_batchnorm", "batch_norms"]
