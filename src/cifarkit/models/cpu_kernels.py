"""A training kernel for CPUs where PyTorch's own is slow for the speed-run network's shapes.

`conv3x3`: a 3x3 'same' convolution whose forward pass and input gradient are PyTorch's, and
whose weight gradient, on small feature maps, is one matrix multiply of the output gradient with
the im2col of the input (built from nine shifted views in channels-last memory). On FastNet's 7x7
and 3x3 maps oneDNN's weight-gradient kernels reach a fraction of the CPU's matrix-multiply speed;
the matrix multiply makes fast94's whole step about 6% faster on CPU C (benchmarks/README.md).

The weight gradient sums the same products in another order, so it equals PyTorch's to rounding,
not bit for bit (tests/test_models_cpu_kernels.py bounds the difference). Two more kernels were
tried here and removed, measured slower or no faster in the step: a max-pool with a one-byte
argmax and a compiled BatchNorm+GELU (benchmarks/README.md, "CPU speed").
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from cifarkit.device import cpu_has_native_bf16

# Feature maps of at most this many pixels take the im2col weight gradient: FastNet's 7x7 and 3x3
# maps, where it was measured faster; on its 15x15 and 31x31 maps oneDNN's kernel is faster.
IM2COL_MAX_PIXELS = 64


def _channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last)


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, 1, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False,
                                                         [0, 0], 1, [True, False, False])[0]
        grad_w = _im2col_weight_grad(x, grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


class _ColumnBuffers(threading.local):
    """One im2col buffer per map shape, kept for the life of the process (per thread).

    The im2col of a micro-batch of 250 images on the 7x7 maps is 56 MB. One strided copy into memory
    that stays allocated made fast94's 32x32 step 3% faster than concatenating nine shifted views
    into a new tensor each call (benchmarks/README.md, "CPU speed")."""

    def __init__(self) -> None:
        self.tensors: dict[tuple, Tensor] = {}

    def get(self, n: int, h: int, w: int, c: int, dtype: torch.dtype) -> Tensor:
        """An uninitialized (n, h, w, 3, 3, c) tensor; the buffer grows to the largest n asked for."""
        key = (h, w, c, dtype)
        held = self.tensors.get(key)
        if held is None or held.shape[0] < n:
            held = self.tensors[key] = torch.empty(n, h, w, 3, 3, c, dtype=dtype)
        return held[:n]


_COLUMNS = _ColumnBuffers()


def _padded_rows(x: Tensor) -> Tensor:
    """x (N, C, H, W) as (N, H+2, W+2, C) with a one-pixel zero border: the rows the 3x3 taps read."""
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))


def _im2col_weight_grad(x: Tensor, grad: Tensor) -> Tensor:
    """dW[k, c, dy, dx] = sum over n, h, w of grad[n, k, h, w] * x_padded[n, c, h + dy, w + dx]."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    padded = _padded_rows(x)
    sn, sh, sw, sc = padded.stride()
    taps = padded.as_strided((n, h, w, 3, 3, c), (sn, sh, sw, sh, sw, sc))    # a view: [n, y, x, dy, dx, c]
    cols = _COLUMNS.get(n, h, w, c, x.dtype).copy_(taps)                        # one strided copy, no new memory
    grad_rows = grad.permute(0, 2, 3, 1).reshape(n * h * w, k).t().contiguous()  # (K, N*H*W)
    dw = grad_rows @ cols.view(n * h * w, 9 * c)                                 # (K, 9*C): (dy, dx, c)
    return dw.view(k, 3, 3, c).permute(0, 3, 1, 2)


def conv3x3(x: Tensor, weight: Tensor) -> Tensor:
    """F.conv2d(x, weight, padding=1) for a (K, C, 3, 3) weight; the im2col weight gradient when x is
    a channels-last CPU batch of small maps that needs gradients, PyTorch's path otherwise."""
    if (x.device.type != "cpu" or not torch.is_grad_enabled() or not _channels_last(x)
            or x.shape[-2] * x.shape[-1] > IM2COL_MAX_PIXELS):
        return F.conv2d(x, weight, None, 1, 1)
    if torch.is_autocast_enabled("cpu"):            # what autocast would do to conv2d's arguments
        dtype = torch.get_autocast_dtype("cpu")
        if dtype == torch.bfloat16 and not cpu_has_native_bf16():
            # emulated bf16: its matrix multiply ran at a tenth of its convolution's speed (precision-speed-cpu-D.json)
            return F.conv2d(x, weight, None, 1, 1)
        x, weight = x.to(dtype), weight.to(dtype)
    with torch.autocast("cpu", enabled=False):
        return _Conv3x3.apply(x, weight)


__all__ = ["IM2COL_MAX_PIXELS", "conv3x3"]
