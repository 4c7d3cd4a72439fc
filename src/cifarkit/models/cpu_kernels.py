"""Training kernels for CPUs where PyTorch's own are slow for the speed-run network's shapes.

Both keep PyTorch's forward pass and change only how the backward pass is computed:

- `conv3x3`: a 3x3 'same' convolution whose weight gradient, on small feature maps, is one matrix
  multiply of the output gradient with the im2col of the input (built from nine shifted views in
  channels-last memory). On the 7x7 and 3x3 maps of FastNet's last blocks oneDNN's weight-gradient
  kernels reach a fraction of the CPU's matrix-multiply speed (benchmarks/README.md has the
  measurements); the input gradient stays oneDNN's.
- `max_pool2x2`: 2x2 max-pooling whose backward writes each input gradient once, from a one-byte
  record of which corner won, instead of zero-filling the whole input gradient and scattering
  through 8-byte indices. Forward values and gradients equal `F.max_pool2d(x, 2)`'s exactly (ties
  go to the first corner in row order, as PyTorch's CPU kernel does).

The weight gradient of `conv3x3` sums the same products in another order, so it equals oneDNN's
to rounding, not bit for bit (tests/test_models_cpu_kernels.py bounds the difference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

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


def _im2col_weight_grad(x: Tensor, grad: Tensor) -> Tensor:
    """dW[k, c, dy, dx] = sum over n, h, w of grad[n, k, h, w] * x_padded[n, c, h + dy, w + dx]."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))                  # (N, H+2, W+2, C)
    cols = torch.cat([padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], dim=3)
    grad_rows = grad.permute(0, 2, 3, 1).reshape(n * h * w, k).t().contiguous()  # (K, N*H*W)
    dw = grad_rows @ cols.reshape(n * h * w, 9 * c)                              # (K, 9*C): (dy, dx, c)
    return dw.view(k, 3, 3, c).permute(0, 3, 1, 2)


def conv3x3(x: Tensor, weight: Tensor) -> Tensor:
    """F.conv2d(x, weight, padding=1) for a (K, C, 3, 3) weight; the im2col weight gradient when x is
    a channels-last CPU batch of small maps that needs gradients, PyTorch's path otherwise."""
    if (x.device.type != "cpu" or not torch.is_grad_enabled() or not _channels_last(x)
            or x.shape[-2] * x.shape[-1] > IM2COL_MAX_PIXELS):
        return F.conv2d(x, weight, None, 1, 1)
    if torch.is_autocast_enabled("cpu"):            # what autocast would do to conv2d's arguments
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
    with torch.autocast("cpu", enabled=False):
        return _Conv3x3.apply(x, weight)


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        v = x[..., :2 * h, :2 * w]
        a, b, c, d = v[..., 0::2, 0::2], v[..., 0::2, 1::2], v[..., 1::2, 0::2], v[..., 1::2, 1::2]
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        out = torch.maximum(top, bottom)
        # The winning corner, first in row order on ties: 0 a, 1 b, 2 c, 3 d.
        second_row = bottom > top
        which = torch.where(second_row, (d > c).to(torch.uint8) + 2, (b > a).to(torch.uint8))
        ctx.save_for_backward(which)
        ctx.input_shape = x.shape
        return out.contiguous(memory_format=torch.channels_last) if _channels_last(x) else out.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (which,) = ctx.saved_tensors
        n, c, height, width = ctx.input_shape
        h, w = height // 2, width // 2
        memory_format = torch.channels_last if _channels_last(grad) else torch.contiguous_format
        grad_x = torch.empty((n, c, height, width), dtype=grad.dtype, device=grad.device,
                             memory_format=memory_format)
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        v = grad_x[..., :2 * h, :2 * w]
        for corner, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            torch.where(which == corner, grad, zero, out=v[..., dy::2, dx::2])
        if height % 2:
            grad_x[..., 2 * h:, :].zero_()
        if width % 2:
            grad_x[..., :2 * h, 2 * w:].zero_()
        return grad_x


def max_pool2x2(x: Tensor) -> Tensor:
    """F.max_pool2d(x, 2), with a faster backward on CPU batches that need gradients."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not x.requires_grad:
        return F.max_pool2d(x, 2)
    return _MaxPool2x2.apply(x)


__all__ = ["IM2COL_MAX_PIXELS", "conv3x3", "max_pool2x2"]
