"""Typed architecture descriptions. A recipe's `model:` section is parsed into one of these.

Models never see recipes or data: `models.registry.build_model(spec, num_classes)` turns a spec
into an `nn.Module`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cifarkit.schema import check

Attention = Literal["none", "se", "cbam", "cbam004"]


@dataclass
class ResNetSpec:
    """One configurable CIFAR ResNet of BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN [+attention] + shortcut, ReLU).

    attention:
      se       squeeze-excitation after the second BN: GAP -> 1x1 conv C->C/se_reduction
               (bias = se_bias) -> ReLU -> 1x1 conv back -> sigmoid -> scale.
      cbam     standard CBAM: channel attention sigmoid(MLP(avg) + MLP(max)), hidden C // cbam_reduction,
               then spatial attention (7x7 conv over [mean, max] maps).
      cbam004  as reference 004 implemented it: hidden C // max(C // cbam_reduction, 4),
               scale sigmoid(MLP(avg)) + sigmoid(MLP(max)), then the same spatial attention.
    """

    arch: Literal["resnet"] = "resnet"
    stem_width: int = 64
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2])
    strides: list[int] | None = None      # default: 1 for the first stage, 2 for the others
    attention: Attention = "none"
    se_reduction: int = 8
    se_bias: bool = True
    cbam_reduction: int = 16
    cbam_kernel: int = 7
    extra_conv: bool = False              # 1x1 conv C->C + BN + ReLU after the last stage (004)
    pool: Literal["adaptive", "avg4"] = "adaptive"
    dropout: float = 0.0
    # kaiming_fan_out: every conv weight (attention convs included) Kaiming-normal, fan_out, ReLU gain;
    # conv biases (only the SE convs have them) keep torch's default; BN weight 1, bias 0. torch: all
    # of torch's defaults.
    init: Literal["torch", "kaiming_fan_out"] = "kaiming_fan_out"
    # the linear head: torch's default, or kaiming_normal (fan_in, ReLU gain) with a zero bias (reference 000)
    head_init: Literal["torch", "kaiming_normal"] = "torch"
    zero_init_residual: bool = False      # last BN of each block starts at 0

    def stage_strides(self) -> list[int]:
        return list(self.strides) if self.strides is not None else [1] + [2] * (len(self.widths) - 1)

    def validate(self) -> None:
        check(self.stem_width > 0, "'model.stem_width' must be positive")
        check(len(self.widths) > 0, "'model.widths' must list at least one stage")
        check(len(self.widths) == len(self.blocks),
              f"'model.widths' has {len(self.widths)} stages but 'model.blocks' has {len(self.blocks)}")
        check(all(w > 0 for w in self.widths), "'model.widths' must all be positive")
        check(all(b > 0 for b in self.blocks), "'model.blocks' must all be positive")
        if self.strides is not None:
            check(len(self.strides) == len(self.widths),
                  f"'model.strides' has {len(self.strides)} entries for {len(self.widths)} stages")
            check(all(s in (1, 2) for s in self.strides), "'model.strides' entries must be 1 or 2")
        check(self.se_reduction > 0, "'model.se_reduction' must be positive")
        check(self.cbam_reduction > 0, "'model.cbam_reduction' must be positive")
        check(self.cbam_kernel % 2 == 1, "'model.cbam_kernel' must be odd")
        check(0.0 <= self.dropout < 1.0, "'model.dropout' must be in [0, 1)")


@dataclass
class FastNetSpec:
    """The speed-run network: frozen 2x2 patch-whitening stem, then conv-pool-BN-GELU blocks; with
    `residual`, the convs after each block's first form a residual branch (airbench96)."""

    arch: Literal["fastnet"] = "fastnet"
    widths: list[int] = field(default_factory=lambda: [64, 256, 256])
    convs_per_block: int = 2
    residual: bool = False                # skip connection around each block's convs after the first
    whiten_width: int = 24                # 2 * 3 * 2 * 2 eigenvector filters (positive and negative)
    whiten_kernel: int = 2
    whiten_eps: float = 5e-4              # added to the patch-covariance eigenvalues before 1/sqrt
    whiten_bias_epochs: int = 3           # the whitening bias trains for this many epochs, then freezes
    scaling: float = 1 / 9                # multiply logits before the loss (temperature)
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12
    activation: Literal["gelu", "silu"] = "gelu"   # silu as the hiverge speed run (no faster on CPUs: benchmarks/)
    # cifarkit's CPU training kernel (models/cpu_kernels.py): the 3x3 convs' weight gradient on small
    # maps as one matrix multiply; the same model, faster training on CPUs; no effect on GPUs or in
    # inference
    cpu_kernels: bool = False

    def validate(self) -> None:
        check(len(self.widths) > 0 and all(w > 0 for w in self.widths), "'model.widths' must be positive")
        check(self.convs_per_block >= 1, "'model.convs_per_block' must be at least 1")
        check(not self.residual or self.convs_per_block >= 2,
              "'model.residual' needs 'model.convs_per_block' >= 2 (the branch skips the convs after the first)")
        check(self.whiten_kernel in (2, 3), "'model.whiten_kernel' must be 2 or 3")
        check(self.whiten_width == 2 * 3 * self.whiten_kernel ** 2,
              f"'model.whiten_width' must be 2*3*k*k = {2 * 3 * self.whiten_kernel ** 2} for kernel {self.whiten_kernel}")


MODEL_SPECS = {"resnet": ResNetSpec, "fastnet": FastNetSpec}
ModelSpec = ResNetSpec | FastNetSpec
