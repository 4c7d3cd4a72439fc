"""Training options the reference recipes need, against the references' own formulas and torch's:
label smoothing over the other classes, parameter-only EMA, per-epoch schedules with their decay
windows, and the references' weight initialization."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.config import TrainConfig, load_recipe
from cifarkit.errors import ConfigError
from cifarkit.models.resnet import ResNet
from cifarkit.models.specs import ResNetSpec
from cifarkit.train.averaging import EMA
from cifarkit.train.losses import FocalLoss, SoftTargetCrossEntropy, build_loss, uniform_smoothing
from cifarkit.train.optim import LRSchedule

C = 10


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, C, generator=g, dtype=torch.float64) * 3, torch.randint(0, C, (32,), generator=g)


# --- label smoothing ----------------------------------------------------------------------------------

def other_classes_loss(logits, labels, eps, gamma=0.0):
    """References 000 and 002, written out: the true class gets 1 - eps, every other eps / (C - 1);
    000's focal weight (1 - p) ** gamma multiplies every class's term."""
    log_p = logits.double().log_softmax(-1)
    target = torch.full_like(log_p, eps / (logits.shape[1] - 1))
    target[torch.arange(len(labels)), labels] = 1 - eps
    weight = (1 - log_p.exp()) ** gamma
    return (-(target * weight * log_p)).sum(-1).mean()


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_uniform_form_is_torchs_label_smoothing(batch, eps):
    logits, labels = batch
    loss = build_loss(TrainConfig(label_smoothing=eps, label_smoothing_form="uniform"))
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits.float(), labels, label_smoothing=eps))


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3])
def test_other_classes_form_matches_the_reference_formula(batch, eps):
    logits, labels = batch
    ce = SoftTargetCrossEntropy(eps, "other_classes")(logits, labels)
    torch.testing.assert_close(ce.double(), other_classes_loss(logits, labels, eps), rtol=1e-6, atol=1e-6)
    focal = FocalLoss(1.0, eps, "other_classes")(logits, labels)
    torch.testing.assert_close(focal.double(), other_classes_loss(logits, labels, eps, gamma=1.0),
                               rtol=1e-6, atol=1e-6)
    # It is not torch's form with the same eps ...
    assert not torch.allclose(ce, F.cross_entropy(logits.float(), labels, label_smoothing=eps))
    # ... but is torch's form with eps * C / (C - 1).
    torch.testing.assert_close(ce, F.cross_entropy(logits.float(), labels, label_smoothing=eps * C / (C - 1)))
    assert uniform_smoothing(eps, C, "other_classes") == pytest.approx(eps * C / (C - 1))


def test_other_classes_form_on_mixed_targets_is_the_mix_of_the_two_losses(batch):
    # 000 and 004 mixed as lam * loss(y_a) + (1 - lam) * loss(y_b); the soft target gives the same.
    logits, labels = batch
    partner, lam = labels.roll(1), 0.3
    soft = lam * F.one_hot(labels, C).double() + (1 - lam) * F.one_hot(partner, C).double()
    for loss, gamma in ((SoftTargetCrossEntropy(0.1, "other_classes"), 0.0), (FocalLoss(1.0, 0.1, "other_classes"), 1.0)):
        expected = (lam * other_classes_loss(logits, labels, 0.1, gamma)
                    + (1 - lam) * other_classes_loss(logits, partner, 0.1, gamma))
        torch.testing.assert_close(loss(logits, soft).double(), expected, rtol=1e-6, atol=1e-6)


def test_smoothing_form_is_validated():
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=0.6, label_smoothing_form="other_classes").validate()
    with pytest.raises(ConfigError, match="form"):
        SoftTargetCrossEntropy(0.1, "everywhere")


def test_seed000_and_seed002_smooth_over_the_other_classes(batch):
    logits, labels = batch
    for name, eps, gamma in (("seed000", 0.1, 1.0), ("seed002", 0.05, 0.0)):
        loss = build_loss(load_recipe(name).train)
        torch.testing.assert_close(loss(logits, labels).double(), other_classes_loss(logits, labels, eps, gamma),
                                   rtol=1e-6, atol=1e-6)


# --- EMA of the parameters only -----------------------------------------------------------------------

def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def train_steps(model: nn.Module, ema: EMA, steps: int = 5) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, 3, 6, 6, generator=g)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)


def test_parameter_only_ema_is_000s_and_004s_shadow_average():
    model = tiny_net()
    model(torch.zeros(1, 3, 6, 6))                        # materialize the lazy layer
    shadow = {n: p.detach().clone() for n, p in model.named_parameters()}    # EMA.register
    ema = EMA(model, 0.9, average_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        model(torch.randn(8, 3, 6, 6, generator=g)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        for n, p in model.named_parameters():             # EMA.update: decay * shadow + (1 - decay) * param
            shadow[n] = 0.9 * shadow[n] + 0.1 * p.detach()
    # apply_shadow + state_dict: the shadow parameters with the live model's buffers.
    expected = {**model.state_dict(), **shadow}
    ours = ema.module.state_dict()
    assert set(ours) == set(expected)
    for key in ours:
        torch.testing.assert_close(ours[key], expected[key].to(ours[key].dtype))


def test_average_buffers_flag_decides_whether_bn_statistics_are_averaged():
    copied, averaged = tiny_net(), tiny_net()
    for m in (copied, averaged):
        m(torch.zeros(1, 3, 6, 6))
    ema_copy = EMA(copied, 0.9, average_buffers=False)
    ema_avg = EMA(averaged, 0.9)
    train_steps(copied, ema_copy)
    train_steps(averaged, ema_avg)
    live = copied[1].running_mean
    assert torch.equal(ema_copy.module[1].running_mean, live)
    assert not torch.allclose(ema_avg.module[1].running_mean, averaged[1].running_mean)
    assert ema_copy.state_dict()["average_buffers"] is False


# --- schedules: per-epoch updates and decay windows -------------------------------------------------

SPE = 3    # steps per epoch


def per_epoch(cfg: TrainConfig) -> list[float]:
    """Our rate at every step, checked constant within each epoch; one value per epoch."""
    schedule = LRSchedule(cfg, SPE)
    out = []
    for epoch in range(cfg.epochs):
        rates = {schedule.lr_at(epoch * SPE + s) for s in range(SPE)}
        assert len(rates) == 1, f"epoch {epoch}: the rate changes within the epoch"
        out.append(rates.pop())
    return out


def torch_rates(optimizer, epochs: int, before_epoch, after_epoch) -> list[float]:
    rates = []
    for epoch in range(epochs):
        before_epoch(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
        after_epoch(epoch)
    return rates


def sgd(lr: float):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def test_seed000_schedule_is_its_cosine_warmup_scheduler():
    cfg = load_recipe("seed000").train
    # script.ipynb, CosineWarmupScheduler.step(epoch - 1) at the start of 1-based epoch `epoch`.
    expected = []
    for e in range(cfg.epochs):
        if e < 5:
            expected.append(1e-6 + (0.1 - 1e-6) * e / 5)
        else:
            expected.append(1e-6 + 0.5 * (0.1 - 1e-6) * (1 + math.cos(math.pi * (e - 5) / (195 - 5))))
    assert per_epoch(cfg) == pytest.approx(expected, rel=1e-12)


def test_seed002_schedule_is_its_lambda_lr():
    cfg = load_recipe("seed002").train
    opt = sgd(0.1)

    def warmup_with_cosine_lr(epoch):      # code/ResNet-CIFAR10.ipynb
        return epoch / 10 if epoch < 10 else 0.5 * (1. + math.cos(math.pi * (epoch - 5) / (60 - 5)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=warmup_with_cosine_lr)
    expected = torch_rates(opt, 60, lambda e: None, lambda e: (opt.step(), scheduler.step()))
    ours = per_epoch(cfg)
    assert ours == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert ours[0] == 0.0 and ours[-1] == pytest.approx(8.15e-5, rel=1e-3)   # it never reaches 0


def test_seed003_schedule_is_its_warmup_then_cosine_annealing():
    cfg = load_recipe("seed003").train
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.01, weight_decay=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda epoch: min(1.0, (epoch + 1) / 5))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.01 / 1000)

    def before(epoch):                     # DL_2025_Project1.ipynb, train_final_phase
        opt.step()
        (warmup if epoch < 5 else cosine).step()
    expected = torch_rates(opt, 50, before, lambda e: None)
    ours = per_epoch(cfg)
    assert ours == pytest.approx(expected, rel=1e-9)
    assert ours[:5] == pytest.approx([0.004, 0.006, 0.008, 0.01, 0.01])


def test_seed004_schedule_is_cosine_annealing_stepped_per_epoch():
    cfg = load_recipe("seed004").train
    opt = sgd(0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=500)
    expected = torch_rates(opt, 500, lambda e: None, lambda e: (opt.step(), scheduler.step()))
    assert per_epoch(cfg) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_defaults_keep_the_per_step_schedule():
    cfg = TrainConfig(epochs=4, lr=0.1, warmup_epochs=1)
    schedule = LRSchedule(cfg, SPE)
    assert len({schedule.lr_at(s) for s in range(SPE, 2 * SPE)}) == SPE
    assert schedule.lr_at(SPE) == pytest.approx(0.1)
    assert schedule.lr_at(4 * SPE - 1) == pytest.approx(0.1 * (1 + math.cos(math.pi * (3 * SPE - 1) / (3 * SPE))) / 2)


def test_decay_window_is_validated():
    with pytest.raises(ConfigError, match="decay"):
        TrainConfig(epochs=10, decay_start_epoch=8, decay_end_epoch=8).validate()
    with pytest.raises(ConfigError, match="decay"):
        TrainConfig(epochs=10, decay_start_epoch=-1).validate()
    TrainConfig(epochs=10, warmup_epochs=20).validate()      # no window set: the old rules


# --- weight initialization ----------------------------------------------------------------------------

def test_kaiming_init_reaches_attention_convs_and_leaves_se_biases_at_torchs_default():
    torch.manual_seed(0)
    cbam = ResNet(ResNetSpec(stem_width=8, widths=[16, 248], blocks=[1, 1], attention="cbam004"))
    mlp = cbam.stages[1][0].attention.channel.mlp[0]          # 248 -> 16, 1x1: fan_out = 16
    assert mlp.weight.std().item() == pytest.approx(math.sqrt(2 / mlp.out_channels), rel=0.1)
    plain = ResNet(ResNetSpec(stem_width=8, widths=[16, 248], blocks=[1, 1], attention="cbam004", init="torch"))
    assert plain.stages[1][0].attention.channel.mlp[0].weight.std().item() < 0.2 * mlp.weight.std().item()
    se = ResNet(ResNetSpec(stem_width=8, widths=[16, 64], blocks=[1, 1], attention="se", se_bias=True))
    reduce = se.stages[1][0].attention.reduce
    bound = 1 / math.sqrt(reduce.in_channels)                 # torch's default bias: U(-1/sqrt(fan_in), ...)
    assert reduce.bias.abs().max().item() <= bound and reduce.bias.abs().sum() > 0


def test_head_init_kaiming_normal_as_reference_000():
    torch.manual_seed(0)
    spec = ResNetSpec(stem_width=8, widths=[16, 512], blocks=[1, 1], head_init="kaiming_normal")
    head = ResNet(spec, num_classes=100).head
    assert head.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert torch.equal(head.bias, torch.zeros(100))
    default = ResNet(ResNetSpec(stem_width=8, widths=[16, 512], blocks=[1, 1]), num_classes=100).head
    assert default.weight.abs().max().item() <= 1 / math.sqrt(512) and default.bias.abs().sum() > 0
    assert load_recipe("seed000").model.head_init == "kaiming_normal"
