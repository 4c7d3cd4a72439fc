"""Optimizers and the stateless per-step learning-rate schedule, checked against torch's schedulers."""

import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from cifarkit.config import TrainConfig
from cifarkit.errors import ConfigError
from cifarkit.train.muon import Muon, orthogonalize
from cifarkit.train.optim import LRSchedule, build_optimizer, swa_start_epoch


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def torch_lrs(scheduler_factory, total: int, lr: float, momentum_key: str | None = None, opt_cls="sgd"):
    """Learning rates (and momenta) torch's scheduler sets before each of `total` steps."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr, momentum=0.9) if opt_cls == "sgd" else torch.optim.AdamW([p], lr=lr)
    sched = scheduler_factory(opt)
    lrs, moms = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        if momentum_key:
            value = opt.param_groups[0][momentum_key]
            moms.append(value[0] if momentum_key == "betas" else value)
        opt.step()
        sched.step()
    return lrs, moms


def assert_rel_close(ours, ref, rel):
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a == pytest.approx(b, rel=rel, abs=1e-15), f"step {i}: {a} != {b}"


@pytest.mark.parametrize("epochs,spe,pct", [(3, 7, 0.1), (5, 10, 0.3), (2, 4, 0.25), (1, 20, 0.02)])
def test_onecycle_lr_and_momentum_match_torch(epochs, spe, pct):
    cfg = TrainConfig(epochs=epochs, lr=0.1, schedule="onecycle", onecycle_pct_start=pct)
    sched = LRSchedule(cfg, spe)
    factory = lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * spe, pct_start=pct,
                                                  anneal_strategy="cos", div_factor=25, final_div_factor=1e4,
                                                  three_phase=False)
    ref_lr, ref_mom = torch_lrs(factory, sched.total_steps, 0.1, "momentum")
    assert_rel_close([sched.lr_at(s) for s in range(sched.total_steps)], ref_lr, 1e-9)
    assert_rel_close([sched.momentum_at(s) for s in range(sched.total_steps)], ref_mom, 1e-9)


def test_onecycle_apply_cycles_sgd_momentum_and_adam_beta1_like_torch():
    cfg = TrainConfig(epochs=4, lr=0.01, schedule="onecycle", optimizer="adamw", onecycle_pct_start=0.25)
    sched = LRSchedule(cfg, 5)
    factory = lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=20, pct_start=0.25)
    ref_lr, ref_beta1 = torch_lrs(factory, 20, 0.01, "betas", opt_cls="adamw")
    opt = build_optimizer(tiny_net(), cfg, {"head": {"params": [], "lr_scale": 2.0}})
    for step in range(20):
        assert sched.apply(opt, step) == pytest.approx(ref_lr[step], rel=1e-9)
        for group in opt.param_groups:
            assert group["betas"][0] == pytest.approx(ref_beta1[step], rel=1e-9)
            assert group["betas"][1] == 0.999
    sgd = build_optimizer(tiny_net(), TrainConfig(epochs=2, schedule="onecycle"))
    sched.apply(sgd, 0)
    assert sgd.param_groups[0]["momentum"] == pytest.approx(0.95)


def test_onecycle_warmup_shorter_than_one_step_does_not_crash():
    sched = LRSchedule(TrainConfig(epochs=1, lr=0.1, schedule="onecycle", onecycle_pct_start=0.1), 10)
    assert sched.lr_at(0) == pytest.approx(0.1)      # torch divides by zero here
    assert sched.lr_at(9) == pytest.approx(0.1 / 25 / 1e4)


def test_cosine_with_warmup_matches_torch_linear_then_cosine():
    epochs, spe, warm = 6, 5, 2
    cfg = TrainConfig(epochs=epochs, lr=0.1, schedule="cosine", warmup_epochs=warm, warmup_start_lr=1e-3,
                      min_lr=1e-4)
    sched = LRSchedule(cfg, spe)
    w, total = warm * spe, epochs * spe

    def factory(opt):
        first = lr_scheduler.LinearLR(opt, start_factor=1e-2, end_factor=1.0, total_iters=w)
        second = lr_scheduler.CosineAnnealingLR(opt, T_max=total - w, eta_min=1e-4)
        return lr_scheduler.SequentialLR(opt, [first, second], milestones=[w])

    ref, _ = torch_lrs(factory, total, 0.1)
    assert_rel_close([sched.lr_at(s) for s in range(total)], ref, 1e-9)


def test_cosine_hand_formula_without_warmup():
    cfg = TrainConfig(epochs=4, lr=0.2, schedule="cosine", min_lr=0.01)
    sched = LRSchedule(cfg, 25)
    assert sched.lr_at(0) == 0.2
    for s in (1, 37, 50, 99):
        assert sched.lr_at(s) == pytest.approx(0.01 + 0.19 * (1 + math.cos(math.pi * s / 100)) / 2, rel=1e-12)
    assert sched.lr_at(50) == pytest.approx(0.105)


def test_linear_and_constant_after_fractional_warmup():
    lin = LRSchedule(TrainConfig(epochs=5, lr=1.0, schedule="linear", warmup_epochs=0.5, min_lr=0.0), 8)
    assert lin.warmup_steps == 4
    assert [lin.lr_at(s) for s in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lin.lr_at(4 + 18) == pytest.approx(0.5)
    const = LRSchedule(TrainConfig(epochs=5, lr=0.3, schedule="constant", warmup_epochs=1), 4)
    assert const.lr_at(2) == pytest.approx(0.15)
    assert all(const.lr_at(s) == 0.3 for s in range(4, 20))


def test_step_schedule_matches_torch_steplr():
    cfg = TrainConfig(epochs=9, lr=0.01, schedule="step", step_epochs=3, step_gamma=0.1)
    sched = LRSchedule(cfg, 4)
    ref, _ = torch_lrs(lambda opt: lr_scheduler.StepLR(opt, step_size=12, gamma=0.1), 36, 0.01)
    assert_rel_close([sched.lr_at(s) for s in range(36)], ref, 1e-9)


def test_swa_lr_is_constant_from_the_swa_start_step():
    cfg = TrainConfig(epochs=10, lr=0.1, schedule="cosine", swa_start=0.75, swa_lr=0.05)
    sched = LRSchedule(cfg, 10)
    assert sched.swa_from_step == 75
    plain = LRSchedule(TrainConfig(epochs=10, lr=0.1, schedule="cosine"), 10)
    assert [sched.lr_at(s) for s in range(75)] == [plain.lr_at(s) for s in range(75)]
    assert all(sched.lr_at(s) == 0.05 for s in range(75, 100))
    # without swa_lr the schedule is untouched even when SWA averages
    kept = LRSchedule(TrainConfig(epochs=10, lr=0.1, swa_start=0.75), 10)
    assert kept.lr_at(90) == plain.lr_at(90)


@pytest.mark.parametrize("start,epochs,expected", [(0.0, 10, None), (0.75, 195, 147), (0.75, 4, 3),
                                                   (0.7, 10, 7), (0.99, 10, 9), (0.5, 1, 0)])
def test_swa_start_epoch(start, epochs, expected):
    assert swa_start_epoch(TrainConfig(epochs=epochs, swa_start=start)) == expected


def test_schedule_is_stateless_and_clamped():
    cfg = TrainConfig(epochs=3, schedule="onecycle")
    a, b = LRSchedule(cfg, 10), LRSchedule(cfg, 10)
    assert [a.lr_at(s) for s in (17, 3, 17)] == [b.lr_at(17), b.lr_at(3), b.lr_at(17)]
    assert a.lr_at(10_000) == a.lr_at(29) and a.lr_at(-5) == a.lr_at(0)
    with pytest.raises(ConfigError):
        LRSchedule(cfg, 0)


def test_apply_multiplies_by_each_groups_lr_scale():
    net = tiny_net()
    groups = {"bn": {"params": list(net[1].parameters()), "lr_scale": 64.0, "weight_decay": 0.0}}
    cfg = TrainConfig(epochs=2, lr=0.1, schedule="linear", weight_decay=5e-4)
    opt = build_optimizer(net, cfg, groups)
    sched = LRSchedule(cfg, 10)
    lr = sched.apply(opt, 5)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["bn"]["lr"] == pytest.approx(64 * lr) and by_name["default"]["lr"] == pytest.approx(lr)
    assert by_name["bn"]["weight_decay"] == 0.0 and by_name["default"]["weight_decay"] == 5e-4


def test_sgd_options_reach_torch():
    cfg = TrainConfig(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)
    opt = build_optimizer(tiny_net(), cfg)
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["dampening"], g["weight_decay"]) == (0.05, 0.8, True, 0.0, 1e-3)
    damp = build_optimizer(tiny_net(), TrainConfig(momentum=0.9, dampening=0.1)).param_groups[0]
    assert damp["dampening"] == 0.1
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer(tiny_net(), TrainConfig(momentum=0.0, nesterov=True))


def test_adamw_options_reach_torch():
    opt = build_optimizer(tiny_net(), TrainConfig(optimizer="adamw", lr=0.01, betas=[0.8, 0.99], weight_decay=1e-3))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.99) and opt.param_groups[0]["weight_decay"] == 1e-3


def test_no_decay_norm_bias_and_frozen_params():
    net = tiny_net()
    net[0].weight.requires_grad_(False)
    opt = build_optimizer(net, TrainConfig(weight_decay=5e-4, no_decay_norm_bias=True))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert id(net[0].weight) not in decay
    assert decay[id(net[4].weight)] == 5e-4
    for p in (net[1].weight, net[1].bias, net[4].bias):
        assert decay[id(p)] == 0.0
    everything = build_optimizer(tiny_net(), TrainConfig(weight_decay=5e-4))
    assert len(everything.param_groups) == 1 and len(everything.param_groups[0]["params"]) == 5


def test_param_groups_list_form_and_duplicates():
    net = tiny_net()
    opt = build_optimizer(net, TrainConfig(), {"head": list(net[4].parameters())})
    names = [g["name"] for g in opt.param_groups]
    assert names == ["head", "default"]
    assert sum(len(g["params"]) for g in opt.param_groups) == 5
    with pytest.raises(ConfigError, match="more than one"):
        build_optimizer(net, TrainConfig(), {"a": [net[4].bias], "b": {"params": [net[4].bias]}})
    with pytest.raises(ConfigError, match="no trainable"):
        build_optimizer(net.requires_grad_(False), TrainConfig())


def test_optimizer_state_round_trips_with_group_extras():
    net = tiny_net()
    cfg = TrainConfig(no_decay_norm_bias=True)
    opt = build_optimizer(net, cfg, {"bn": {"params": list(net[1].parameters()), "lr_scale": 4.0}})
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    again = build_optimizer(net, cfg, {"bn": {"params": list(net[1].parameters()), "lr_scale": 4.0}})
    again.load_state_dict(opt.state_dict())
    assert [g["lr_scale"] for g in again.param_groups] == [g["lr_scale"] for g in opt.param_groups]


# -- Muon ------------------------------------------------------------------------------------------

def test_orthogonalize_approximates_the_polar_factor():
    g = torch.randn(16, 36, generator=torch.Generator().manual_seed(0))
    x = orthogonalize(g)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (x * (u @ vh)).sum() / (x.norm() * (u @ vh).norm())
    assert cos > 0.98
    assert orthogonalize(g.T).shape == (36, 16)


def test_muon_puts_only_conv_filters_on_muon():
    net = tiny_net()
    opt = build_optimizer(net, TrainConfig(optimizer="muon", no_decay_norm_bias=True))
    assert isinstance(opt, Muon)
    muon_params = [p for g in opt.param_groups if g["muon"] for p in g["params"]]
    assert [id(p) for p in muon_params] == [id(net[0].weight)]
    forced = build_optimizer(net, TrainConfig(optimizer="muon"), {"head": {"params": [net[4].weight], "muon": True}})
    assert {id(p) for g in forced.param_groups if g["muon"] for p in g["params"]} == {id(net[0].weight),
                                                                                     id(net[4].weight)}


@pytest.mark.parametrize("nesterov,dampening,wd", [(True, 0.0, 1e-3), (False, 0.2, 0.0), (False, 0.0, 5e-4)])
def test_muon_sgd_groups_match_torch_sgd(nesterov, dampening, wd):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 4, generator=g), torch.randn(4, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(4)]
    ours = [nn.Parameter(t.clone()) for t in start]
    ref = [nn.Parameter(t.clone()) for t in start]
    kw = dict(lr=0.05, momentum=0.9, nesterov=nesterov, dampening=dampening, weight_decay=wd)
    opt, ref_opt = Muon(ours, **kw), torch.optim.SGD(ref, **kw)
    for step_grads in grads:
        for params, o in ((ours, opt), (ref, ref_opt)):
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            o.step()
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-6)


def test_muon_step_on_a_filter_by_hand():
    w = nn.Parameter(torch.randn(4, 3, 3, 3))
    g = torch.randn_like(w)
    opt = Muon([{"params": [w], "muon": True}], lr=0.1, momentum=0.5, nesterov=True)
    before = w.detach().clone()
    w.grad = g.clone()
    opt.step()
    direction = g + 0.5 * g                 # buffer = g after the first step; nesterov adds m * buffer
    expected = before * (2.0 / before.norm()) - 0.1 * orthogonalize(direction.reshape(4, -1)).view_as(w)
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def airbench94_muon_reference_steps(weight, grads, *, lr, momentum, nesterov, ns_steps, dtype):
    """airbench94_muon's published Muon update, restated step by step for comparison: momentum
    buffer b = m b + g; direction g + m b (Nesterov) or b; the filter bank rescaled to norm
    sqrt(out_channels); then w -= lr * NS(direction as (out, -1)), where NS is the quintic
    Newton-Schulz iteration (3.4445, -4.7750, 2.0315) on the matrix scaled to unit norm (eps 1e-7),
    transposed when tall, run in `dtype` (bfloat16 in airbench)."""
    w = weight.clone()
    buf = torch.zeros_like(w)
    for g in grads:
        buf = momentum * buf + g
        direction = g + momentum * buf if nesterov else buf
        w = w * (w.size(0) ** 0.5 / w.norm())
        x = direction.reshape(len(direction), -1).to(dtype)
        x = x / (x.norm() + 1e-7)
        tall = x.size(0) > x.size(1)
        if tall:
            x = x.T
        for _ in range(ns_steps):
            a = x @ x.T
            x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
        if tall:
            x = x.T
        w = w - lr * x.float().view_as(w)
    return w


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (64, 4, 2, 2)])      # wide, and tall (64 > 16)
def test_muon_matches_airbench94_muon_update_on_a_fixed_input(shape):
    gen = torch.Generator().manual_seed(7)
    start = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) for _ in range(3)]
    w = nn.Parameter(start.clone())
    opt = Muon([{"params": [w], "muon": True, "ns_steps": 3}], lr=0.24, momentum=0.6, nesterov=True)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    settings = dict(lr=0.24, momentum=0.6, nesterov=True, ns_steps=3)
    # On the CPU cifarkit runs Newton-Schulz in float32: the same arithmetic exactly ...
    same_dtype = airbench94_muon_reference_steps(start, grads, dtype=torch.float32, **settings)
    torch.testing.assert_close(w.detach(), same_dtype, atol=1e-5, rtol=1e-5)
    # ... and within bfloat16 rounding of airbench's bfloat16 iteration: about 0.006 here, against
    # 0.05 for a real change to the update such as dropping Nesterov momentum.
    airbench = airbench94_muon_reference_steps(start, grads, dtype=torch.bfloat16, **settings)
    torch.testing.assert_close(w.detach(), airbench, atol=0.015, rtol=0)


def test_muon_trains_a_tiny_net():
    torch.manual_seed(0)
    net = tiny_net()
    x, y = torch.randn(32, 3, 6, 6), torch.randint(0, 3, (32,))
    cfg = TrainConfig(optimizer="muon", lr=0.02, momentum=0.6, nesterov=True, weight_decay=0.0)
    opt = build_optimizer(net, cfg, {"conv": {"params": [net[0].weight], "lr_scale": 10.0}})
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_muon_filters_get_their_own_peak_lr_momentum_and_ns_steps():
    net = tiny_net()
    cfg = TrainConfig(optimizer="muon", lr=2.0, momentum=0.85, nesterov=True, muon_lr=0.24,
                      muon_momentum=0.6, muon_ns_steps=3, bias_lr_scale=64.0)
    opt = build_optimizer(net, cfg, {"bn": {"params": list(net[1].parameters()), "lr_scale": 64.0}})
    filters = [g for g in opt.param_groups if g["muon"]]
    others = [g for g in opt.param_groups if not g["muon"]]
    assert len(filters) == 1 and filters[0]["params"][0] is net[0].weight
    assert filters[0]["momentum"] == 0.6 and filters[0]["ns_steps"] == 3
    assert all(g["momentum"] == 0.85 for g in others)
    schedule = LRSchedule(TrainConfig(lr=2.0, schedule="linear", epochs=4), steps_per_epoch=10)
    schedule.apply(opt, 20)                 # halfway down the straight line: every group at half its peak
    assert filters[0]["lr"] == pytest.approx(0.12)
    assert {round(g["lr"], 6) for g in others} == {1.0, 64.0}


def test_muon_settings_are_validated():
    from cifarkit.errors import ConfigError
    for bad in ({"muon_lr": 0.0}, {"muon_momentum": 1.0}, {"muon_ns_steps": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(optimizer="muon", **bad).validate()


def test_a_linear_to_zero_group_leaves_the_schedule():
    """airbench94_muon's whitening bias: from lr x lr_scale at step 0 in a straight line to 0 at step N,
    whatever the recipe's schedule (here a warmup then cosine) does meanwhile."""
    cfg = TrainConfig(lr=2.0, schedule="cosine", warmup_epochs=1, warmup_start_lr=0.1, epochs=4)
    schedule = LRSchedule(cfg, steps_per_epoch=10)
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr_scale": 64.0, "linear_to_zero_steps": 30},
                           {"params": [b], "lr_scale": 64.0}], lr=1.0)
    for step, expected in [(0, 128.0), (15, 64.0), (29, 128.0 / 30), (30, 0.0), (39, 0.0)]:
        schedule.apply(opt, step)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)
        assert opt.param_groups[1]["lr"] == pytest.approx(64.0 * schedule.lr_at(step))
