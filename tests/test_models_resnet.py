"""The configurable ResNet and its blocks: exact reference parameter counts, shapes, block math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cifarkit.errors import ConfigError
from cifarkit.models.blocks import (
    CBAM, BasicBlock, ChannelAttention, SpatialAttention, SqueezeExcite, cbam_hidden)
from cifarkit.models.resnet import ResNet
from cifarkit.models.specs import ResNetSpec

# The five reference architectures, as the recipes seed000..seed004 describe them.
PRESETS = {
    "000": ResNetSpec(stem_width=40, widths=[40, 80, 160], blocks=[3, 5, 3], attention="se",
                      se_reduction=8, se_bias=True, dropout=0.2),
    "001": ResNetSpec(stem_width=48, widths=[48, 96, 128, 364], blocks=[2, 2, 2, 2], strides=[1, 2, 2, 2],
                      pool="avg4", dropout=0.1),
    "002": ResNetSpec(stem_width=66, widths=[66, 132, 264], blocks=[3, 4, 3]),
    "003": ResNetSpec(stem_width=64, widths=[64, 128, 256], blocks=[3, 5, 3]),
    "004": ResNetSpec(stem_width=31, widths=[62, 124, 248, 248], blocks=[2, 2, 2, 2], strides=[1, 2, 2, 1],
                      attention="cbam004", cbam_reduction=16, extra_conv=True, dropout=0.3),
}
PARAMS = {"000": 1_953_575, "001": 4_997_722, "002": 4_916_284, "003": 4_918_602, "004": 4_913_705}
STAGE_SIDES = {"000": [32, 16, 8], "001": [32, 16, 8, 4], "002": [32, 16, 8], "003": [32, 16, 8],
               "004": [32, 16, 8, 8]}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def models() -> dict[str, ResNet]:
    torch.manual_seed(0)
    return {name: ResNet(spec) for name, spec in PRESETS.items()}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_is_exact(models, name):
    assert n_params(models[name]) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_forward_shapes_and_stage_sizes(models, name):
    model = models[name].eval()
    sides = []
    hooks = [stage.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1])) for stage in model.stages]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert sides == STAGE_SIDES[name]
    assert [stage[-1].bn2.num_features for stage in model.stages] == PRESETS[name].widths


SMALL_004 = ResNetSpec(stem_width=8, widths=[16, 32, 32], blocks=[1, 1, 1], strides=[1, 2, 1],
                       attention="cbam004", extra_conv=True, dropout=0.3)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = ResNet(SMALL_004).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x)
        b = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_num_classes_sets_the_head():
    model = ResNet(ResNetSpec(stem_width=8, widths=[8, 16], blocks=[1, 1]), num_classes=100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_004_shortcuts_projection_only_where_shape_changes(models):
    model = models["004"]
    projections = [[not isinstance(b.downsample, nn.Identity) for b in stage] for stage in model.stages]
    # 31->62 (stride 1) projects; 62->124 and 124->248 (stride 2) project; 248->248 stride 1 is identity.
    assert projections == [[True, False], [True, False], [True, False], [False, False]]
    assert isinstance(model.extra, nn.Sequential) and model.extra[0].kernel_size == (1, 1)
    assert model.dropout.p == 0.3 and model.head.in_features == 248


def test_004_channel_attention_hidden_widths(models):
    hidden = [stage[0].attention.channel.mlp[0].out_channels for stage in models["004"].stages]
    assert hidden == [15, 17, 16, 16]
    assert [cbam_hidden(c, 16, "cbam") for c in (62, 124, 248)] == [3, 7, 15]


def test_cbam_variant_differs_from_cbam004_with_documented_count():
    torch.manual_seed(0)
    std = ResNet(ResNetSpec(**{**PRESETS["004"].__dict__, "attention": "cbam"}))
    # Standard CBAM's MLP is narrower (C // 16 = 3, 7, 15, 15 vs 15, 17, 16, 16): 2*C*h per block, 2 blocks/stage.
    delta = sum(2 * 2 * c * (h004 - h) for c, h004, h in [(62, 15, 3), (124, 17, 7), (248, 16, 15), (248, 16, 15)])
    assert n_params(std) == PARAMS["004"] - delta == 4_903_785


def test_channel_attention_variants_by_hand():
    torch.manual_seed(0)
    std, v004 = ChannelAttention(16, 4, "cbam"), ChannelAttention(16, 4, "cbam004")
    v004.load_state_dict(std.state_dict())  # both have hidden 4 here
    x = torch.randn(3, 16, 5, 5)
    mlp = std.mlp
    a, m = mlp(x.mean((2, 3), keepdim=True)), mlp(x.amax((2, 3), keepdim=True))
    torch.testing.assert_close(std(x), x * torch.sigmoid(a + m))
    torch.testing.assert_close(v004(x), x * (torch.sigmoid(a) + torch.sigmoid(m)))
    assert not torch.allclose(std(x), v004(x))
    assert all(conv.bias is None for conv in (mlp[0], mlp[2]))


def test_cbam_and_cbam004_models_give_different_outputs():
    small = dict(stem_width=8, widths=[16, 16], blocks=[1, 1], cbam_reduction=4)
    torch.manual_seed(0)
    std = ResNet(ResNetSpec(attention="cbam", **small)).eval()
    v004 = ResNet(ResNetSpec(attention="cbam004", **small)).eval()
    v004.load_state_dict(std.state_dict())  # same shapes: hidden 16 // 4 = 4 in both variants
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(std(x), v004(x))


def test_spatial_attention_by_hand():
    torch.manual_seed(0)
    sa = SpatialAttention(7)
    x = torch.randn(2, 6, 8, 8)
    maps = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
    expected = x * torch.sigmoid(F.conv2d(maps, sa.conv.weight, padding=3))
    torch.testing.assert_close(sa(x), expected)
    assert sa.conv.bias is None and sa.conv.weight.shape == (1, 2, 7, 7)
    cbam = CBAM(6, 2, 7, "cbam")
    torch.testing.assert_close(cbam(x), cbam.spatial(cbam.channel(x)))


def test_squeeze_excite_matches_torchvision_and_by_hand():
    torch.manual_seed(0)
    ours = SqueezeExcite(40, reduction=8, bias=True)
    theirs = torchvision.ops.SqueezeExcitation(40, 5)
    theirs.fc1.load_state_dict(ours.reduce.state_dict())
    theirs.fc2.load_state_dict(ours.expand.state_dict())
    x = torch.randn(2, 40, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x))
    w1, b1 = ours.reduce.weight.flatten(1), ours.reduce.bias
    w2, b2 = ours.expand.weight.flatten(1), ours.expand.bias
    s = torch.sigmoid(F.relu(x.mean((2, 3)) @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(ours(x), x * s[:, :, None, None])
    assert SqueezeExcite(40, 8, bias=False).reduce.bias is None


@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (16, 32, 2), (16, 32, 1)])
def test_basic_block_matches_torchvision(cin, cout, stride):
    torch.manual_seed(0)
    ours = BasicBlock(cin, cout, stride)
    downsample = None
    if not isinstance(ours.downsample, nn.Identity):
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    theirs = torchvision.models.resnet.BasicBlock(cin, cout, stride, downsample)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, cin, 8, 8)
    ours.train(), theirs.train()
    torch.testing.assert_close(ours(x), theirs(x))
    assert (downsample is None) == (cin == cout and stride == 1)
    assert all(m.bias is None for m in ours.modules() if isinstance(m, nn.Conv2d))


def test_kaiming_fan_out_init_and_zero_init_residual():
    torch.manual_seed(0)
    model = ResNet(ResNetSpec(stem_width=64, widths=[64, 128], blocks=[1, 1], zero_init_residual=True))
    conv = model.stages[1][0].conv2  # 128 -> 128, fan_out = 128 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert all((b.bn2.weight == 0).all() for stage in model.stages for b in stage)
    assert (model.stem[1].weight == 1).all() and (model.stem[1].bias == 0).all()
    plain = ResNet(ResNetSpec(stem_width=64, widths=[64, 128], blocks=[1, 1], init="torch"))
    # torch's default (kaiming_uniform with a=sqrt(5)) is about 1/sqrt(3) of the fan-in ReLU gain.
    assert plain.stages[1][0].conv2.weight.std().item() < 0.7 * conv.weight.std().item()


@pytest.mark.parametrize("attention", ["se", "cbam", "cbam004"])
def test_every_parameter_gets_a_gradient(attention):
    torch.manual_seed(0)
    model = ResNet(ResNetSpec(**{**SMALL_004.__dict__, "attention": attention})).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_invalid_specs_raise_config_error():
    with pytest.raises(ConfigError, match="stages"):
        ResNet(ResNetSpec(widths=[8, 16], blocks=[1]))
    with pytest.raises(ConfigError, match="avg4"):
        ResNet(ResNetSpec(stem_width=8, widths=[8, 8, 8, 8], blocks=[1, 1, 1, 1], strides=[2, 2, 2, 2], pool="avg4"))
    with pytest.raises(ConfigError, match="num_classes"):
        ResNet(ResNetSpec(stem_width=8, widths=[8], blocks=[1]), num_classes=0)
