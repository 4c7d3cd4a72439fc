"""cifarkit's CPU training kernels against PyTorch's: the same forward, the same gradients
(exactly for max-pooling, to bf16 rounding for the convolution's weight gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifarkit.models.cpu_kernels import IM2COL_MAX_PIXELS, conv3x3, max_pool2x2


def batch(shape, seed=0, dtype=torch.float32, levels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if levels:                                   # few distinct values: many ties inside 2x2 windows
        x = (x * levels).round() / levels
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(6, 5, 31, 31), (4, 8, 15, 15), (3, 16, 7, 7), (2, 4, 8, 6), (2, 3, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_matches_torch_exactly_ties_included(shape, dtype):
    x = batch(shape, dtype=dtype, levels=2).requires_grad_()
    ours = max_pool2x2(x)
    ref_x = x.detach().clone().requires_grad_()
    ref = F.max_pool2d(ref_x, 2)
    assert torch.equal(ours, ref) and ours.is_contiguous(memory_format=torch.channels_last)
    grad = batch(ref.shape, seed=1, dtype=dtype)
    ours.backward(grad)
    ref.backward(grad)
    assert torch.equal(x.grad, ref_x.grad)
    ties = (x.detach()[..., :2 * (shape[-2] // 2), :2 * (shape[-1] // 2)] == 0).float().mean()
    assert ties > 0.1                                # the case really has ties to break


def test_max_pool_without_gradients_is_torchs():
    x = batch((2, 3, 8, 8))
    with torch.no_grad():
        assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2))


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


def test_conv3x3_under_bf16_autocast_gives_fp32_weights_a_close_gradient():
    x = batch((8, 32, 7, 7)).requires_grad_()
    weight = torch.randn(32, 32, 3, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    grads = []
    for conv in (conv3x3, lambda a, b: F.conv2d(a, b, padding=1)):
        x.grad, weight.grad = None, None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x, weight)
        assert y.dtype == torch.bfloat16
        y.float().square().mean().backward()
        grads.append((x.grad.clone(), weight.grad.clone()))
    (ours_x, ours_w), (ref_x, ref_w) = grads
    assert ours_w.dtype == torch.float32
    assert torch.equal(ours_x, ref_x)
    # both sum bf16 products in float32 and round the result to bf16 (8 significant bits)
    torch.testing.assert_close(ours_w, ref_w, rtol=2 ** -7, atol=1e-3 * ref_w.abs().max().item())


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
