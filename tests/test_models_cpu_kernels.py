"""cifarkit's CPU training kernel against PyTorch's: the same forward and input gradient, the
weight gradient to rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifarkit.models.cpu_kernels import IM2COL_MAX_PIXELS, conv3x3


def batch(shape, seed=0, dtype=torch.float32):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape, k", [((6, 8, 7, 7), 16), ((5, 16, 3, 3), 8), ((4, 8, 8, 8), 4)])
def test_conv3x3_forward_and_input_gradient_are_torchs_and_the_weight_gradient_close(shape, k):
    assert shape[-1] * shape[-2] <= IM2COL_MAX_PIXELS
    x = batch(shape).requires_grad_()
    weight = torch.randn(k, shape[1], 3, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    ours = conv3x3(x, weight)
    ref_x, ref_w = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = F.conv2d(ref_x, ref_w, padding=1)
    assert torch.equal(ours, ref)
    grad = batch(ref.shape, seed=3)
    ours.backward(grad)
    ref.backward(grad)
    assert torch.equal(x.grad, ref_x.grad)
    torch.testing.assert_close(weight.grad, ref_w.grad, rtol=1e-5, atol=1e-4)


@pytest.fixture
def bf16_kernel(monkeypatch):
    """The im2col path under bf16 autocast even on a CPU that only emulates bf16 (where conv3x3
    otherwise leaves bf16 to PyTorch), so its arithmetic is tested on every machine."""
    import cifarkit.models.cpu_kernels as kernels
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: True)


def test_conv3x3_under_bf16_autocast_gives_fp32_weights_the_rounded_gradient(bf16_kernel):
    x = batch((8, 32, 7, 7)).requires_grad_()
    weight = torch.randn(32, 32, 3, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv3x3(x, weight)
    assert y.dtype == torch.bfloat16
    seen = []
    y.register_hook(seen.append)
    y.float().square().mean().backward()
    assert weight.grad.dtype == torch.float32
    # what the backward pass had: bf16 inputs and a bf16 output gradient
    grad_y, x_bf16, w_bf16 = seen[0], x.detach().bfloat16(), weight.detach().bfloat16()
    backward = torch.ops.aten.convolution_backward
    grad_x = backward(grad_y, x_bf16, w_bf16, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
    assert torch.equal(x.grad, grad_x.float())                 # the input gradient is PyTorch's
    # the weight gradient: the bf16 products summed in float32, rounded once to bf16 (8 significant
    # bits). PyTorch's own bf16 kernel is held to this only where it is oneDNN's AMX one: on an
    # AVX2 CPU it rounds partial sums and lands further from the float32 sum.
    exact = backward(grad_y.float(), x_bf16.float(), w_bf16.float(), None, [1, 1], [1, 1], [1, 1], False,
                     [0, 0], 1, [False, True, False])[1]
    torch.testing.assert_close(weight.grad, exact, rtol=2 ** -8, atol=1e-6 * exact.abs().max().item())


def test_the_reused_im2col_buffer_gives_each_call_its_own_columns():
    """The buffer is shared by every call on the same map shape: a smaller batch after a larger one,
    and two layers of one backward pass, each get the weight gradient of their own inputs."""
    from cifarkit.models.cpu_kernels import _im2col_weight_grad
    generator = torch.Generator().manual_seed(5)
    cases = [(6, 16, 7, 7), (2, 16, 7, 7), (3, 16, 3, 3), (6, 16, 7, 7)]
    for n, c, h, w in cases:
        x = torch.randn(n, c, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(n, 8, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
        ref = torch.ops.aten.convolution_backward(grad, x, torch.zeros(8, c, 3, 3), None, [1, 1], [1, 1], [1, 1],
                                                  False, [0, 0], 1, [False, True, False])[1]
        torch.testing.assert_close(_im2col_weight_grad(x, grad), ref, rtol=1e-4, atol=1e-4)
    x = batch((4, 8, 7, 7)).requires_grad_()
    w1, w2 = (torch.randn(8, 8, 3, 3, generator=generator, requires_grad=True) for _ in range(2))
    conv3x3(torch.relu(conv3x3(x, w1)), w2).square().sum().backward()
    ref_w1, ref_w2 = (w.detach().clone().requires_grad_() for w in (w1, w2))
    F.conv2d(torch.relu(F.conv2d(x.detach(), ref_w1, padding=1)), ref_w2, padding=1).square().sum().backward()
    torch.testing.assert_close(w1.grad, ref_w1.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(w2.grad, ref_w2.grad, rtol=1e-4, atol=1e-3)


def test_conv3x3_leaves_large_maps_and_inference_to_torch(monkeypatch):
    import cifarkit.models.cpu_kernels as kernels
    calls = []
    monkeypatch.setattr(kernels._Conv3x3, "apply", lambda *a: calls.append(a) or F.conv2d(a[0], a[1], padding=1))
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    conv3x3(batch((2, 4, 15, 15)).requires_grad_(), w)     # 225 pixels: PyTorch's kernel
    with torch.no_grad():
        conv3x3(batch((2, 4, 7, 7)), w)                   # no gradients wanted
    conv3x3(batch((2, 4, 7, 7)).contiguous(), w)            # not channels-last
    assert calls == []
    conv3x3(batch((2, 4, 7, 7)), w)
    assert len(calls) == 1


def test_conv3x3_leaves_bf16_to_torch_where_the_cpu_only_emulates_it(monkeypatch):
    """Where bf16 is emulated, PyTorch's bf16 matrix multiply is about ten times slower than its bf16 convolution."""
    import cifarkit.models.cpu_kernels as kernels
    calls = []
    monkeypatch.setattr(kernels._Conv3x3, "apply", lambda *a: calls.append(a) or F.conv2d(a[0], a[1], padding=1))
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: False)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    x = batch((2, 4, 7, 7)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv3x3(x, w).dtype == torch.bfloat16
    assert calls == []
    conv3x3(x, w)                                           # fp32 still takes the kernel
    assert len(calls) == 1
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv3x3(x, w)
    assert len(calls) == 2 and calls[1][0].dtype == torch.bfloat16


def fastnet_gradients(kernels: bool, precision: str, eval_check: bool = False):
    from cifarkit.models.fastnet import FastNet
    from cifarkit.models.specs import FastNetSpec
    torch.manual_seed(0)
    net = FastNet(FastNetSpec(widths=[16, 32, 32], cpu_kernels=kernels)).to(memory_format=torch.channels_last)
    net.prepare(batch((32, 3, 32, 32), seed=8))
    x, y = batch((64, 3, 32, 32), seed=9), torch.arange(64) % 10
    with torch.no_grad():
        logits = net.eval()(x)
    net.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = F.cross_entropy(net(x).float(), y)
    loss.backward()
    return logits, {n: p.grad for n, p in net.named_parameters() if p.grad is not None}, list(net.buffers())


def test_fastnet_with_cpu_kernels_is_the_same_model_and_trains_the_same_to_rounding(bf16_kernel):
    plain_logits, plain, plain_buffers = fastnet_gradients(False, "fp32")
    fast_logits, fast, fast_buffers = fastnet_gradients(True, "fp32")
    assert torch.equal(plain_logits, fast_logits)                 # inference takes PyTorch's path
    for name in plain:                                              # in float32: the same gradients
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(plain_buffers, fast_buffers):                   # and BN running statistics
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-5, atol=1e-6)
    # In bf16 both paths round, at different points: each is as close to the float32 gradient.
    _, torch_bf16, _ = fastnet_gradients(False, "bf16")
    _, kernels_bf16, _ = fastnet_gradients(True, "bf16")
    for name, truth in plain.items():
        error = lambda g: ((g - truth).norm() / truth.norm()).item()   # noqa: E731
        assert error(kernels_bf16[name]) < max(1.5 * error(torch_bf16[name]), 0.02), name
