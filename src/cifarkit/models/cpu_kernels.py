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

- `batch_norm_gelu`: training-mode BatchNorm with its scale frozen at 1 followed by GELU, as two
  compiled loops forward (statistics; normalize and activate) and two backward, instead of five
  separate passes over the activations each way (PyTorch's inductor writes the loops; the first
  call per shape compiles them, a few seconds).

The weight gradient of `conv3x3` sums the same products in another order, and `batch_norm_gelu`
computes in float32 what PyTorch's bf16 kernels round in between, so both equal PyTorch's to
rounding, not bit for bit (tests/test_models_cpu_kernels.py bounds the differences).
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


_SQRT_HALF = 0.7071067811865476            # 1 / sqrt(2)
_INV_SQRT_TWO_PI = 0.3989422804014327      # 1 / sqrt(2 pi)


def _bn_gelu_forward(x: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(0, 2, 3), correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    y = (xf - mean) * rstd + bias.view(1, -1, 1, 1)
    out = 0.5 * y * (1.0 + torch.erf(y * _SQRT_HALF))
    return out.to(x.dtype), mean.flatten(), var.flatten(), rstd.flatten()


def _bn_gelu_backward(grad: Tensor, x: Tensor, bias: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor]:
    shape = (1, -1, 1, 1)
    xhat = (x.float() - mean.view(shape)) * rstd.view(shape)
    y = xhat + bias.view(shape)
    slope = 0.5 * (1.0 + torch.erf(y * _SQRT_HALF)) + y * torch.exp(-0.5 * y * y) * _INV_SQRT_TWO_PI
    grad_y = grad.float() * slope
    count = x.numel() // x.shape[1]
    grad_bias = grad_y.sum(dim=(0, 2, 3))
    grad_xhat_mean = (grad_y * xhat).sum(dim=(0, 2, 3)) / count
    grad_x = rstd.view(shape) * (grad_y - (grad_bias / count).view(shape) - xhat * grad_xhat_mean.view(shape))
    return grad_x.to(x.dtype), grad_bias


_compiled: dict[str, object] = {}


def _kernel(name: str, fn):
    """`fn` compiled once per process (inductor, fixed shapes: a fast94 run has three)."""
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


class _BatchNormGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, momentum: float,
                eps: float) -> Tensor:
        out, mean, var, rstd = _kernel("bn_gelu_forward", _bn_gelu_forward)(x, bias, eps)
        with torch.no_grad():                      # as BatchNorm2d in training: the unbiased variance
            count = x.numel() // x.shape[1]
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * (count / max(count - 1, 1)), momentum)
        ctx.save_for_backward(x, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, bias, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last) if _channels_last(x) else grad.contiguous()
        grad_x, grad_bias = _kernel("bn_gelu_backward", _bn_gelu_backward)(grad, x, bias, mean, rstd)
        return grad_x, grad_bias if ctx.needs_input_grad[1] else None, None, None, None, None


def batch_norm_gelu(x: Tensor, norm: torch.nn.BatchNorm2d) -> Tensor:
    """F.gelu(norm(x)) for a BatchNorm whose weight is frozen at 1, fused on CPU training batches
    (PyTorch's path in eval mode, without gradients, off the CPU, or for any other kind of BatchNorm:
    a synchronized one must compute its statistics over all processes)."""
    if (type(norm) is not torch.nn.BatchNorm2d or x.device.type != "cpu" or not norm.training
            or not torch.is_grad_enabled() or norm.weight.requires_grad or not bool((norm.weight == 1).all())):
        return F.gelu(norm(x))
    norm.num_batches_tracked.add_(1)
    with torch.autocast("cpu", enabled=False):
        return _BatchNormGELU.apply(x, norm.bias, norm.running_mean, norm.running_var, norm.momentum, norm.eps)


__all__ = ["IM2COL_MAX_PIXELS", "conv3x3", "max_pool2x2", "batch_norm_gelu"]
