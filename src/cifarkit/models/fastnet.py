"""The speed-run network (airbench94 style), built from a FastNetSpec.

    whiten   conv k x k, 3 -> 2*3*k*k channels, no padding: the eigenvectors of the k x k patch
             covariance of training images, positive and negative, scaled by 1/sqrt(eigenvalue + eps);
             weight frozen, bias learnable (starts at 0). Filled by `init_whitening`.
    GELU
    blocks   per width: conv3x3 -> maxpool2 -> BN -> GELU, then (convs_per_block - 1) x
             (conv3x3 -> BN -> GELU); with spec.residual the output of the first GELU is added back
             before the last GELU of the block (airbench96: the activation comes after the sum)
             (every GELU is SiLU with spec.activation "silu", as the hiverge speed run)
    pool     global max
    head     linear, no bias; logits are multiplied by spec.scaling (a fixed temperature)

BatchNorm: weights frozen at 1 (requires_grad False, still counted as parameters), biases learnable,
eps = spec.bn_eps. spec.bn_momentum uses the airbench convention -- the fraction of the running
statistic KEPT each step -- so the torch momentum is 1 - spec.bn_momentum (0.6 -> 0.4).

3x3 convs start Dirac-style: the first in_channels output filters are the identity, the rest
torch's default init. With widths 64/256/256 the model has 1,972,792 parameters, as airbench94.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.errors import DataError
from cifarkit.models.cpu_kernels import conv3x3
from cifarkit.models.specs import FastNetSpec
from cifarkit.models.trainable import TrainableModel, scaled_group


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose weight stays at 1; `momentum` in the airbench convention (fraction kept)."""

    def __init__(self, num_features: int, momentum: float, eps: float):
        super().__init__(num_features, eps=eps, momentum=1.0 - momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' conv without bias whose first in_channels filters start as the identity; with
    `cpu_kernels`, its weight gradient on small maps comes from `cpu_kernels.conv3x3`."""

    def __init__(self, in_channels: int, out_channels: int, cpu_kernels: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)
        self.cpu_kernels = cpu_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3x3(x, self.weight) if self.cpu_kernels else super().forward(x)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    """conv -> maxpool2 -> BN -> GELU, then (convs - 1) x (conv -> BN -> GELU); with `residual`, the
    first GELU's output is added to the last BN's output before the last GELU."""

    def __init__(self, in_channels: int, out_channels: int, convs: int, bn_momentum: float, bn_eps: float,
                 residual: bool = False, activation=F.gelu, cpu_kernels: bool = False):
        super().__init__()
        self.residual = residual
        self.activation = activation
        self.convs = nn.ModuleList(
            DiracConv(in_channels if i == 0 else out_channels, out_channels, cpu_kernels) for i in range(convs))
        self.norms = nn.ModuleList(
            FrozenScaleBatchNorm(out_channels, bn_momentum, bn_eps) for _ in range(convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        shortcut = None
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv(x)
            if i == 0:
                x = F.max_pool2d(x, 2)
            if self.residual and i == last:
                x = self.activation(norm(x) + shortcut)
            else:
                x = self.activation(norm(x))
            if i == 0:
                shortcut = x
        return x


ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


class FastNet(TrainableModel):
    """Input float (B, 3, 32, 32) normalized, any memory format; output scaled logits (B, num_classes)."""

    prepare_images = 5000      # the whitening filters come from the patches of this many training images
    summary_depth = 4          # its convolutions sit one level down, in each ConvGroup's lists

    def __init__(self, spec: FastNetSpec, num_classes: int = 10):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.scaling = spec.scaling
        self.activation = ACTIVATIONS[spec.activation]
        self.whiten = nn.Conv2d(3, spec.whiten_width, kernel_size=spec.whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        groups = []
        channels = spec.whiten_width
        for width in spec.widths:
            groups.append(ConvGroup(channels, width, spec.convs_per_block, spec.bn_momentum, spec.bn_eps,
                                    spec.residual, self.activation, spec.cpu_kernels))
            channels = width
        self.blocks = nn.Sequential(*groups)
        self.head = nn.Linear(channels, num_classes, bias=False)

    def set_epoch(self, epoch: int) -> None:
        """The whitening bias learns during the first `whiten_bias_epochs` epochs only (airbench)."""
        self.whiten.bias.requires_grad_(epoch < self.spec.whiten_bias_epochs)

    def param_groups(self, cfg, steps_per_epoch: int) -> dict[str, dict]:
        """The whitening bias at `whiten_bias_lr_scale` x the learning rate; with `whiten_bias_decay`
        its rate leaves the schedule and falls linearly to 0 at the step the bias freezes
        (airbench94_muon). Then the BN biases, as for any model."""
        groups = {}
        if cfg.whiten_bias_lr_scale is not None or cfg.whiten_bias_decay:
            group = scaled_group([self.whiten.bias], cfg.whiten_bias_lr_scale or 1.0, cfg.weight_decay)
            if cfg.whiten_bias_decay:
                group["linear_to_zero_steps"] = self.spec.whiten_bias_epochs * steps_per_epoch
            groups["whiten_bias"] = group
        return {**groups, **super().param_groups(cfg, steps_per_epoch)}

    @torch.no_grad()
    def prepare(self, train_images: torch.Tensor) -> None:
        """The frozen whitening filters, from the patch covariance of the training images."""
        init_whitening(self, train_images.float().contiguous(), num_images=self.prepare_images,
                       eps=self.spec.whiten_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.activation(self.whiten(x)))
        # Global max. Not x.amax(dim=(2, 3)): under torch.compile (torch 2.14, CPU) the backward of
        # that amax gave NaN gradients to every layer below it (see the test of compiled training).
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.scaling


def _patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """All size x size patches (stride 1) of images (N, C, H, W), as rows of length C*size*size."""
    c = images.shape[1]
    patches = images.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H', W', size, size)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


@torch.no_grad()
def init_whitening(model: FastNet, images: torch.Tensor, num_images: int = 5000, eps: float = 5e-4) -> None:
    """Set the frozen whitening filters from the patch covariance of `images` (float, normalized, (N,3,H,W)).

    Uses the first `num_images` images. As in airbench the covariance is the uncentered second
    moment (normalized images have mean ~0). Filters are eigenvectors / sqrt(eigenvalue + eps),
    largest eigenvalue first, followed by their negatives.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"whitening needs images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise DataError(f"whitening needs float normalized images, got dtype {images.dtype}")
    layer = model.whiten
    k = layer.kernel_size[0]
    x = images[:num_images].to(layer.weight.device, torch.float32)
    rows = _patches(x, k)
    covariance = (rows.T @ rows / rows.shape[0]).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # rows, largest first
    filters = eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
    filters = filters.reshape(-1, 3, k, k)
    layer.weight.copy_(torch.cat([filters, -filters]).to(layer.weight.dtype))
