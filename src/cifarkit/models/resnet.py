"""One configurable CIFAR ResNet of BasicBlocks, built from a ResNetSpec.

Layout: stem conv3x3 3->stem_width + BN + ReLU; stages of BasicBlocks (the first block of a stage
carries the stage's stride and any width change); optionally a 1x1 conv + BN + ReLU (reference 004);
pooling; dropout; linear head. This one class reproduces the five reference architectures exactly
(parameter counts are pinned in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.errors import ConfigError
from cifarkit.models.blocks import CBAM, BasicBlock, SqueezeExcite
from cifarkit.models.specs import ResNetSpec
from cifarkit.models.trainable import TrainableModel

IMAGE_SIZE = 32  # CIFAR; only "avg4" pooling depends on it (its flattened width)


def make_attention(spec: ResNetSpec, channels: int) -> nn.Module | None:
    if spec.attention == "se":
        return SqueezeExcite(channels, spec.se_reduction, spec.se_bias)
    if spec.attention in ("cbam", "cbam004"):
        return CBAM(channels, spec.cbam_reduction, spec.cbam_kernel, variant=spec.attention)
    return None


class ResNet(TrainableModel):
    """A CIFAR ResNet; input float (B, 3, 32, 32) in any memory format, output logits (B, num_classes)."""

    def __init__(self, spec: ResNetSpec, num_classes: int = 10):
        super().__init__()
        spec.validate()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        self.spec = spec
        self.stem = nn.Sequential(
            nn.Conv2d(3, spec.stem_width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(spec.stem_width),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = spec.stem_width
        for width, depth, stride in zip(spec.widths, spec.blocks, spec.stage_strides()):
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(channels, width, stride if i == 0 else 1, make_attention(spec, width)))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.extra: nn.Module = nn.Identity()
        if spec.extra_conv:
            self.extra = nn.Sequential(
                nn.Conv2d(channels, channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.head = nn.Linear(channels * self._pooled_cells(spec), num_classes)
        self._init_weights(spec)

    @staticmethod
    def _pooled_cells(spec: ResNetSpec) -> int:
        """How many spatial cells survive pooling: 1 for adaptive, (side // 4)^2 for a 4x4 average pool."""
        if spec.pool == "adaptive":
            return 1
        side = IMAGE_SIZE
        for stride in spec.stage_strides():
            side = (side + stride - 1) // stride  # conv3x3, padding 1
        if side < 4:
            raise ConfigError(
                f"'model.pool: avg4' needs a final feature map of at least 4x4, but the strides leave {side}x{side}")
        return (side // 4) ** 2

    def _init_weights(self, spec: ResNetSpec) -> None:
        if spec.init == "kaiming_fan_out":
            # As the references' code: conv biases (SE only) keep torch's default uniform init.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        if spec.head_init == "kaiming_normal":
            nn.init.kaiming_normal_(self.head.weight)   # torch's defaults: fan_in, gain sqrt(2)
            nn.init.zeros_(self.head.bias)
        if spec.zero_init_residual:
            # Each block then starts as (nearly) its shortcut, which helps early training.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector before dropout and the head, shape (B, head.in_features)."""
        x = self.extra(self.stages(self.stem(x)))
        if self.spec.pool == "avg4":
            x = F.avg_pool2d(x, 4)
        else:
            x = F.adaptive_avg_pool2d(x, 1)
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))
