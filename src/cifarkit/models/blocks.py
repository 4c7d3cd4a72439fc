"""Building blocks of the CIFAR ResNets: the BasicBlock and the attention modules it can carry.

Every conv is bias-free (a BatchNorm follows it) except the squeeze-excitation 1x1 convs, whose bias
is a choice (`se_bias`), because reference 000 used one.

Attention variants, placed after the block's second BN and before the residual add:
  SqueezeExcite          GAP -> 1x1 conv C->h (bias) -> ReLU -> 1x1 conv h->C (bias) -> sigmoid -> scale
  ChannelAttention       shared bias-free MLP C->h->C over the average- and max-pooled vectors;
                         variant "cbam":    scale = sigmoid(MLP(avg) + MLP(max))   (Woo et al. 2018)
                         variant "cbam004": scale = sigmoid(MLP(avg)) + sigmoid(MLP(max))
                         (reference 004's implementation; its scale lies in (0, 2), not (0, 1))
  SpatialAttention       concat(channel mean, channel max) -> kxk conv 2->1 (no bias) -> sigmoid -> scale
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ChannelVariant = Literal["cbam", "cbam004"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def cbam_hidden(channels: int, reduction: int, variant: ChannelVariant) -> int:
    """Width of the channel-attention MLP.

    "cbam" uses C // reduction; "cbam004" uses C // max(C // reduction, 4) as reference 004 did
    (15, 17, 16 for C = 62, 124, 248 with reduction 16). Never below 1, so tiny widths still work.
    """
    if variant == "cbam004":
        return max(1, channels // max(channels // reduction, 4))
    return max(1, channels // reduction)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) with 1x1 convs, as reference 000 built it."""

    def __init__(self, channels: int, reduction: int = 8, bias: bool = True):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1, bias=bias)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.expand(F.relu(self.reduce(s)))
        return x * torch.sigmoid(s)


class ChannelAttention(nn.Module):
    """CBAM channel attention in either the standard or reference 004's form (see module docstring)."""

    def __init__(self, channels: int, reduction: int = 16, variant: ChannelVariant = "cbam"):
        super().__init__()
        if variant not in ("cbam", "cbam004"):
            raise ValueError(f"unknown channel attention variant {variant!r}")
        self.variant = variant
        hidden = cbam_hidden(channels, reduction, variant)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        if self.variant == "cbam004":
            scale = torch.sigmoid(avg) + torch.sigmoid(mx)
        else:
            scale = torch.sigmoid(avg + mx)
        return x * scale


class SpatialAttention(nn.Module):
    """CBAM spatial attention: a kxk conv over the channel-mean and channel-max maps."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7,
                 variant: ChannelVariant = "cbam"):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, variant)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN [+ attention] + shortcut, then ReLU.

    The shortcut is the identity, or a strided 1x1 conv + BN when the stride or the width changes.
    Module names (conv1, bn1, conv2, bn2, downsample) follow torchvision's BasicBlock.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 attention: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.attention = attention if attention is not None else nn.Identity()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return F.relu(out + self.downsample(x))
