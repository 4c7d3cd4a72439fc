"""The speed-run network: airbench94's parameter count, frozen parts, Dirac init, whitening, groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.config import TrainConfig
from cifarkit.errors import ConfigError, DataError
from cifarkit.models.fastnet import FastNet, init_whitening
from cifarkit.models.specs import FastNetSpec

AIRBENCH94_PARAMS = 1_972_792
# Frozen: whitening filters 24*3*2*2 and the BN weights of six BNs (64, 64, 256, 256, 256, 256).
AIRBENCH94_FROZEN = 24 * 3 * 2 * 2 + 2 * (64 + 256 + 256)


@pytest.fixture(scope="module")
def net() -> FastNet:
    torch.manual_seed(0)
    return FastNet(FastNetSpec())


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Random images with strong neighbouring-pixel and cross-channel correlation, roughly normalized."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 34, 34, generator=g)
    base = F.avg_pool2d(base, 3, stride=1)  # spatially correlated
    colour = torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    return base * colour * 3 + 0.3 * torch.randn(n, 3, 32, 32, generator=g)


def test_parameter_count_matches_airbench94(net):
    assert sum(p.numel() for p in net.parameters()) == AIRBENCH94_PARAMS
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == AIRBENCH94_PARAMS - AIRBENCH94_FROZEN


def test_forward_shape_channels_last_and_scaling(net):
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        out_cl = net(x.contiguous(memory_format=torch.channels_last))
        features = net.blocks(F.gelu(net.whiten(x))).amax(dim=(2, 3))
    assert out.shape == (3, 10)
    torch.testing.assert_close(out, out_cl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, features @ net.head.weight.T / 9)
    assert net.head.bias is None


def test_spatial_sizes_through_the_blocks(net):
    sides = []
    hooks = [g.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1])) for g in net.blocks]
    with torch.no_grad():
        net.eval()(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sides == [15, 7, 3]  # 32 -> whiten k2 -> 31 -> pool 15 -> 7 -> 3 -> global max


def test_batchnorm_frozen_weights_and_momentum_convention(net):
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    for bn in norms:
        assert not bn.weight.requires_grad and (bn.weight == 1).all()
        assert bn.bias.requires_grad
        assert bn.momentum == pytest.approx(1 - 0.6)  # airbench 0.6 = fraction kept
        assert bn.eps == 1e-12
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    assert (net.whiten.bias == 0).all()


def test_dirac_init_passes_the_first_channels_through(net):
    conv = net.blocks[0].convs[0]  # 24 -> 64
    x = torch.randn(2, 24, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x)[:, :24], x)
        square = net.blocks[1].convs[1]  # 256 -> 256: every filter is the identity
        y = torch.randn(1, 256, 4, 4)
        torch.testing.assert_close(square(y), y)
    assert conv.weight[24:].abs().sum() > 0  # the rest keep torch's random init
    assert all(c.bias is None for g in net.blocks for c in g.convs)


def test_init_whitening_whitens_patches():
    torch.manual_seed(0)
    model = FastNet(FastNetSpec())
    images = smooth_images(200)
    init_whitening(model, images, num_images=150, eps=5e-4)
    w = model.whiten.weight
    assert w.shape == (24, 3, 2, 2) and not w.requires_grad
    torch.testing.assert_close(w[12:], -w[:12])
    # The positive filters map the patch covariance to diag(lambda / (lambda + eps)), largest first.
    patches = images[:150].unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    cov = patches.T.double() @ patches.double() / patches.shape[0]
    eig = torch.linalg.eigvalsh(cov).flip(0)
    flat = w[:12].reshape(12, 12).double()
    torch.testing.assert_close(flat @ cov @ flat.T, torch.diag(eig / (eig + 5e-4)), atol=1e-4, rtol=1e-4)
    # The conv itself (bias 0) produces decorrelated, unit-variance channels.
    with torch.no_grad():
        out = model.whiten(images[:150])[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    torch.testing.assert_close(out.T @ out / out.shape[0], torch.eye(12, dtype=torch.float64), atol=1e-2, rtol=0)


def test_init_whitening_uses_only_the_first_images():
    torch.manual_seed(0)
    a, b = FastNet(FastNetSpec()), FastNet(FastNetSpec())
    images = smooth_images(40)
    init_whitening(a, images, num_images=20)
    init_whitening(b, torch.cat([images[:20], 100 * torch.randn(20, 3, 32, 32)]), num_images=20)
    torch.testing.assert_close(a.whiten.weight, b.whiten.weight)


def test_init_whitening_rejects_bad_images(net):
    with pytest.raises(DataError, match="shape"):
        init_whitening(net, torch.zeros(4, 32, 32, 3))
    with pytest.raises(DataError, match="float"):
        init_whitening(net, torch.zeros(4, 3, 32, 32, dtype=torch.uint8))


def test_param_groups_give_the_whitening_and_bn_biases_their_own_rates(net):
    cfg = TrainConfig(lr=2.0, weight_decay=0.01, bias_lr_scale=64, whiten_bias_lr_scale=8, whiten_bias_decay=True)
    groups = net.param_groups(cfg, steps_per_epoch=10)
    assert list(groups) == ["whiten_bias", "norm_biases"]
    assert groups["whiten_bias"]["params"] == [net.whiten.bias]
    assert groups["whiten_bias"]["lr_scale"] == 8 and groups["whiten_bias"]["weight_decay"] == pytest.approx(0.01 / 8)
    assert groups["whiten_bias"]["linear_to_zero_steps"] == net.spec.whiten_bias_epochs * 10
    norms = [m.bias for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [id(p) for p in groups["norm_biases"]["params"]] == [id(p) for p in norms]
    assert groups["norm_biases"]["lr_scale"] == 64
    # the rest (conv filters, head) is the optimizer's default group; nothing frozen is grouped
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert all(p.requires_grad for g in groups.values() for p in g["params"])
    assert {id(net.head.weight), *(id(c.weight) for c in net.blocks.modules() if isinstance(c, nn.Conv2d))}.isdisjoint(grouped)
    # the airbench94 defaults: no whitening-bias group, BN biases only when scaled
    assert list(net.param_groups(TrainConfig(bias_lr_scale=64), 10)) == ["norm_biases"]
    assert net.param_groups(TrainConfig(), 10) == {}


def test_prepare_computes_the_whitening_from_the_first_images():
    a, b = FastNet(FastNetSpec(widths=[8, 16, 16])), FastNet(FastNetSpec(widths=[8, 16, 16]))
    images = smooth_images(8)
    a.prepare(images.contiguous(memory_format=torch.channels_last))
    init_whitening(b, images, num_images=FastNet.prepare_images, eps=b.spec.whiten_eps)
    assert torch.equal(a.whiten.weight, b.whiten.weight) and a.whiten.weight.abs().sum() > 0


def test_other_shapes_kernel3_and_three_convs_per_block():
    spec = FastNetSpec(widths=[16, 32], convs_per_block=3, whiten_kernel=3, whiten_width=54)
    model = FastNet(spec, num_classes=100)
    assert model.whiten.weight.shape == (54, 3, 3, 3)
    assert len(model.blocks[0].convs) == 3
    init_whitening(model, smooth_images(8))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="whiten_width"):
        FastNet(FastNetSpec(whiten_kernel=3))


def test_training_step_moves_only_trainable_parameters():
    torch.manual_seed(0)
    model = FastNet(FastNetSpec(widths=[8, 16, 16]))
    init_whitening(model, smooth_images(16))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 10)
    loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert model.blocks[0].norms[0].bias.abs().sum() > 0


def test_parameter_count_matches_airbench95():
    """SPEC.md section 3: airbench95 (widths 128/384/384) has 4,606,520 parameters."""
    model = FastNet(FastNetSpec(widths=[128, 384, 384]))
    assert sum(p.numel() for p in model.parameters()) == 4_606_520


def test_residual_block_adds_the_first_activation_before_the_last_gelu():
    torch.manual_seed(0)
    model = FastNet(FastNetSpec(widths=[8, 16], convs_per_block=3, residual=True)).eval()
    block = model.blocks[0]
    x = torch.randn(2, 24, 16, 16)
    with torch.no_grad():
        first = F.gelu(block.norms[0](F.max_pool2d(block.convs[0](x), 2)))
        branch = F.gelu(block.norms[1](block.convs[1](first)))
        expected = F.gelu(block.norms[2](block.convs[2](branch)) + first)
        torch.testing.assert_close(block(x), expected)
        plain = FastNet(FastNetSpec(widths=[8, 16], convs_per_block=3)).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain.blocks[0](x), expected)   # the flag really changes the graph
    with pytest.raises(ConfigError, match="residual"):
        FastNet(FastNetSpec(convs_per_block=1, residual=True))


def test_compiled_training_step_matches_eager():
    """torch.compile (train.compile) must give the eager gradients. With the global max written as
    `amax`, Inductor's backward gave NaN gradients to every layer below it."""
    torch.manual_seed(0)
    model = FastNet(FastNetSpec(widths=[8, 16, 16])).to(memory_format=torch.channels_last)
    init_whitening(model, smooth_images(16))
    x = smooth_images(8, seed=1).contiguous(memory_format=torch.channels_last)
    y = torch.arange(8) % 10

    def grads(forward, bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        F.cross_entropy(logits.float(), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    compiled_model = torch.compile(model)
    eager = grads(model, bf16=False)
    compiled = grads(compiled_model, bf16=False)
    assert eager.keys() == compiled.keys() and "whiten.bias" in eager
    for name, grad in eager.items():
        torch.testing.assert_close(compiled[name], grad, rtol=1e-3, atol=1e-3 * grad.abs().max().item(), msg=name)
    # bf16 rounding on an 8-image batch moves gradients by several percent, so only their direction
    # is compared with the fp32 ones; the bug this guards against gave NaN.
    for name, grad in grads(compiled_model, bf16=True).items():
        assert torch.isfinite(grad).all(), name
        assert F.cosine_similarity(grad.flatten(), eager[name].flatten(), dim=0) > 0.8, name


def test_silu_activation_replaces_every_gelu():
    torch.manual_seed(0)
    gelu_net = FastNet(FastNetSpec(widths=[8, 16, 16])).eval()
    silu_net = FastNet(FastNetSpec(widths=[8, 16, 16], activation="silu")).eval()
    silu_net.load_state_dict(gelu_net.state_dict())
    x = torch.randn(2, 3, 32, 32)

    def by_hand(net, act):
        h = act(net.whiten(x))
        for group in net.blocks:
            for i, (conv, norm) in enumerate(zip(group.convs, group.norms)):
                h = conv(h)
                h = F.max_pool2d(h, 2) if i == 0 else h
                h = act(norm(h))
        return h.amax(dim=(2, 3)) @ net.head.weight.T / 9

    with torch.no_grad():
        torch.testing.assert_close(silu_net(x), by_hand(silu_net, F.silu))
        torch.testing.assert_close(gelu_net(x), by_hand(gelu_net, F.gelu))
        assert not torch.allclose(silu_net(x), gelu_net(x))


def test_unknown_activation_is_a_config_error():
    from cifarkit.config import recipe_from_dict
    with pytest.raises(ConfigError, match="activation"):
        recipe_from_dict({"model": {"arch": "fastnet", "activation": "relu"}})
