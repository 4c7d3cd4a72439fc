"""Losses: hard/soft targets, label smoothing, focal loss, float32 under low precision."""

import pytest
import torch
import torch.nn.functional as F

from cifarkit.config import TrainConfig
from cifarkit.train.losses import FocalLoss, SoftTargetCrossEntropy, build_loss, smoothed_targets

C = 10


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, C, generator=g) * 3
    labels = torch.randint(0, C, (16,), generator=g)
    return logits, labels


def naive_focal(logits, soft, gamma, eps):
    """The docstring formula, written out in float64."""
    logits = logits.double()
    t = soft.double() * (1 - eps) + eps / logits.shape[1]
    p = logits.softmax(1)
    return (-(t * (1 - p) ** gamma * p.log())).sum(1).mean()


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2])
def test_hard_ce_equals_torch_cross_entropy(batch, eps):
    logits, labels = batch
    ours = SoftTargetCrossEntropy(eps)(logits, labels)
    ref = F.cross_entropy(logits, labels, label_smoothing=eps)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_one_hot_equals_hard(batch, eps):
    logits, labels = batch
    one_hot = F.one_hot(labels, C).float()
    for loss in (SoftTargetCrossEntropy(eps), FocalLoss(1.5, eps)):
        assert torch.allclose(loss(logits, one_hot), loss(logits, labels), atol=1e-6, rtol=0)


def test_soft_ce_is_linear_in_the_target_mix(batch):
    logits, labels = batch
    other = labels.roll(1)
    lam = 0.3
    soft = lam * F.one_hot(labels, C).float() + (1 - lam) * F.one_hot(other, C).float()
    loss = SoftTargetCrossEntropy(0.1)
    expected = lam * loss(logits, labels) + (1 - lam) * loss(logits, other)
    assert torch.allclose(loss(logits, soft), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_focal_gamma_zero_equals_smoothed_ce(batch, eps):
    logits, labels = batch
    assert torch.allclose(FocalLoss(0.0, eps)(logits, labels),
                          F.cross_entropy(logits, labels, label_smoothing=eps), atol=1e-6, rtol=0)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_matches_the_documented_formula(batch, gamma):
    logits, labels = batch
    soft = torch.softmax(torch.randn(16, C, generator=torch.Generator().manual_seed(1)), 1)
    for target, soft_ref in ((labels, F.one_hot(labels, C)), (soft, soft)):
        ours = FocalLoss(gamma, 0.1)(logits, target)
        assert torch.allclose(ours.double(), naive_focal(logits, soft_ref, gamma, 0.1), atol=1e-5, rtol=0)


def test_focal_down_weights_easy_examples(batch):
    logits, labels = batch
    assert FocalLoss(2.0)(logits, labels) < FocalLoss(0.0)(logits, labels)


@pytest.mark.parametrize("loss", [SoftTargetCrossEntropy(0.1), FocalLoss(0.5, 0.1), FocalLoss(2.0, 0.0)])
def test_gradient_finite_even_for_saturated_logits(loss):
    logits = torch.zeros(4, C)
    logits[:, 0] = 1e4                       # p_0 == 1 exactly in float32
    logits.requires_grad_(True)
    loss(logits, torch.tensor([0, 0, 1, 2])).backward()
    assert torch.isfinite(logits.grad).all()


def test_low_precision_logits_are_computed_in_float32(batch):
    logits, labels = batch
    for loss in (SoftTargetCrossEntropy(0.1), FocalLoss(1.0, 0.1)):
        out = loss(logits.bfloat16(), labels)
        assert out.dtype == torch.float32
        assert torch.allclose(out, loss(logits.bfloat16().float(), labels), atol=1e-6, rtol=0)


def test_smoothed_targets_sum_to_one_and_reject_bad_shapes():
    t = smoothed_targets(torch.tensor([1, 2]), 5, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 1].item() == pytest.approx(0.9 + 0.02)
    with pytest.raises(ValueError):
        smoothed_targets(torch.zeros(2, 4), 5, 0.0)


def test_build_loss_reads_the_recipe():
    ce = build_loss(TrainConfig(loss="ce", label_smoothing=0.05))
    assert isinstance(ce, SoftTargetCrossEntropy) and ce.label_smoothing == 0.05
    focal = build_loss(TrainConfig(loss="focal", focal_gamma=2.0, label_smoothing=0.1))
    assert isinstance(focal, FocalLoss) and (focal.gamma, focal.label_smoothing) == (2.0, 0.1)
