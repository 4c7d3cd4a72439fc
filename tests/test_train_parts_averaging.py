"""EMA and SWA weight averages: closed forms, buffers, BN recalibration, checkpoint round trips."""

import io

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from cifarkit.errors import ConfigError
from cifarkit.train.averaging import EMA, SWA


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def snapshots(k: int, seed: int = 0):
    """k full state dicts with random floats and a growing num_batches_tracked."""
    g = torch.Generator().manual_seed(seed)
    template = tiny_net().state_dict()
    out = []
    for i in range(k):
        sd = {}
        for name, t in template.items():
            sd[name] = (torch.tensor(i + 1) if name.endswith("num_batches_tracked")
                        else torch.randn(t.shape, generator=g))
        out.append(sd)
    return out


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_ema_equals_closed_form_for_parameters_and_buffers():
    model = tiny_net()
    states = snapshots(4)
    model.load_state_dict(states[0])
    d = 0.9
    ema = EMA(model, d)
    for sd in states[1:]:
        model.load_state_dict(sd)
        ema.update(model)
    got = ema.module.state_dict()
    for name in states[0]:
        if name.endswith("num_batches_tracked"):
            assert got[name].item() == 4       # copied, not averaged
            continue
        x = [s[name] for s in states]
        expected = d ** 3 * x[0] + (1 - d) * (d ** 2 * x[1] + d * x[2] + x[3])
        assert torch.allclose(got[name], expected, atol=1e-6), name
    assert ema.num_updates == 3
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_keeps_float32_copy_of_a_low_precision_model():
    model = tiny_net().bfloat16()
    ema = EMA(model, 0.5)
    assert all(t.dtype == torch.float32 for t in ema.module.parameters())
    with torch.no_grad():
        model[5].bias.fill_(2.0)
    before = ema.module[5].bias.clone()
    ema.update(model)
    assert torch.allclose(ema.module[5].bias, 0.5 * before + 1.0, atol=1e-6)
    assert model[5].bias.dtype == torch.bfloat16       # the live model is left alone


def test_ema_follows_a_compiled_wrapper_and_rejects_other_models():
    model = tiny_net()
    ema = EMA(model, 0.0)
    wrapper = nn.Module()
    wrapper._orig_mod = model                          # what torch.compile's wrapper exposes
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(wrapper)
    assert torch.equal(ema.module[0].weight, model[0].weight)
    with pytest.raises(ValueError):
        ema.update(nn.Linear(2, 2))
    with pytest.raises(ConfigError):
        EMA(model, 1.0)


def test_swa_average_equals_mean_of_snapshots_and_buffers_follow_the_latest():
    model = tiny_net()
    states = snapshots(5, seed=1)
    swa = SWA(model)
    for sd in states:
        model.load_state_dict(sd)
        swa.update(model)
    assert swa.n_averaged == 5
    got = swa.module.state_dict()
    for name, _ in model.named_parameters():
        mean = torch.stack([s[name] for s in states]).mean(0)
        assert torch.allclose(got[name], mean, atol=1e-6), name
    for name, _ in model.named_buffers():
        assert torch.equal(got[name], states[-1][name]), name


def test_recalibrate_bn_matches_torch_update_bn():
    torch.manual_seed(0)
    model = tiny_net()
    swa = SWA(model)
    swa.update(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, 8, 8, generator=g) * 2 + 1 for _ in range(3)]
    reference = tiny_net()
    reference.load_state_dict(swa.module.state_dict())
    update_bn(batches, reference)
    swa.recalibrate_bn(iter(batches), "cpu")
    bn, ref_bn = swa.module[1], reference[1]
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref_bn.running_var, atol=1e-6)
    assert bn.num_batches_tracked.item() == 3
    assert bn.momentum == 0.1 and not swa.module.training
    # labelled batches work too, and an empty pass leaves the statistics alone
    swa.recalibrate_bn([(x, torch.zeros(8)) for x in batches], None)
    assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-6)
    swa.recalibrate_bn([], None)
    assert torch.allclose(bn.running_var, ref_bn.running_var, atol=1e-6)


def test_ema_and_swa_state_dicts_round_trip_through_weights_only_load():
    model = tiny_net()
    ema, swa = EMA(model, 0.9), SWA(model)
    for sd in snapshots(3, seed=2):
        model.load_state_dict(sd)
        ema.update(model)
        swa.update(model)
    fresh_ema, fresh_swa = EMA(tiny_net(), 0.9), SWA(tiny_net())
    fresh_ema.load_state_dict(roundtrip(ema.state_dict()))
    fresh_swa.load_state_dict(roundtrip(swa.state_dict()))
    assert fresh_ema.num_updates == 3 and fresh_swa.n_averaged == 3
    for a, b in ((fresh_ema, ema), (fresh_swa, swa)):
        for (name, x), (_, y) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
            assert torch.equal(x, y), name
    # resumed averaging continues exactly as the uninterrupted one
    model.load_state_dict(snapshots(1, seed=3)[0])
    for a, b in ((fresh_ema, ema), (fresh_swa, swa)):
        a.update(model)
        b.update(model)
        assert torch.equal(a.module[0].weight, b.module[0].weight)


def test_lookahead_pulls_back_every_k_steps_with_its_cubic_ramp_then_finishes_on_the_slow_weights():
    from cifarkit.train.averaging import Lookahead
    states = snapshots(5, seed=3)
    net = tiny_net()
    net.load_state_dict(states[0])
    look = Lookahead(net, every=2, total_steps=8)
    slow = {k: v.clone() for k, v in states[0].items() if v.is_floating_point()}
    assert look.decay_at(4) == pytest.approx(0.95 ** 2 * (4 / 8) ** 3)
    for step, state in enumerate(states[1:], start=1):
        net.load_state_dict(state)                      # what the optimizer made of the live weights
        look.step(net, step)
        live = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
        if step % 2:
            assert all(torch.equal(live[k], state[k]) for k in slow)          # left alone between syncs
        else:
            d = look.decay_at(step)
            slow = {k: d * slow[k] + (1 - d) * state[k] for k in slow}      # BN statistics included
            assert all(torch.allclose(live[k], slow[k], atol=1e-6) for k in slow)
    again = Lookahead(tiny_net(), every=2, total_steps=8)
    again.load_state_dict(roundtrip(look.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(again.slow, look.slow))
    net.load_state_dict(snapshots(1, seed=9)[0])
    look.finish(net)
    assert all(torch.allclose(net.state_dict()[k], slow[k], atol=1e-6) for k in slow)
