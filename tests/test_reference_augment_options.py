"""Augmentation options the reference recipes need: erasing fill, reference 000's mixing fade, op order."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from cifarkit.augment import color, geometric, policies
from cifarkit.augment.pipeline import build_augment, build_mixer, describe_augment
from cifarkit.augment.schedule import mix_strength
from cifarkit.config import AugmentConfig, load_recipe
from cifarkit.errors import ConfigError

MEAN = (0.49139968, 0.48215841, 0.44653091)
STD = (0.24703223, 0.24348513, 0.26158784)


def images(n: int, seed: int = 0) -> torch.Tensor:
    # Pixel values 1..254 / 255: never 0 and never the mean, so a painted pixel always shows.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 255, (n, 3, 32, 32), generator=g).float() / 255


def erase_all(fill, n: int = 24, seed: int = 0, std=STD):
    cfg = AugmentConfig(crop_padding=0, flip="none", erasing_p=1.0, erasing_fill=fill)
    x = images(n, seed)
    out = build_augment(cfg, MEAN, std=std)(x, generator=torch.Generator().manual_seed(seed + 1), epoch=0)
    return x, out


def box_of(x: torch.Tensor, out: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the one painted rectangle of an image (C, H, W)."""
    changed = (out != x).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    top, left = int(rows[0]), int(cols[0])
    height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    assert changed.sum() == height * width, "the painted pixels form one rectangle"
    return top, left, height, width


def normalize(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x, list(MEAN), list(STD))


# --- augment.erasing_fill against torchvision's RandomErasing value semantics ---------------------

def test_fill_0_is_random_erasing_value_0_before_normalize():
    x, out = erase_all(0)
    for i in range(len(x)):
        top, left, h, w = box_of(x[i], out[i])
        reference = TF.normalize(TF.erase(x[i], top, left, h, w, torch.tensor(0.0)), list(MEAN), list(STD))
        torch.testing.assert_close(normalize(out[i]), reference)


def test_fill_mean_is_random_erasing_value_0_after_normalize():
    x, out = erase_all("mean")
    for i in range(len(x)):
        top, left, h, w = box_of(x[i], out[i])
        reference = TF.erase(normalize(x[i]), top, left, h, w, torch.tensor(0.0))
        torch.testing.assert_close(normalize(out[i]), reference, atol=1e-6, rtol=0)


def test_fill_random_is_standard_normal_after_normalize_like_torchvisions():
    x, out = erase_all("random", n=64)
    ours = []
    for i in range(len(x)):
        top, left, h, w = box_of(x[i], out[i])
        ours.append(normalize(out[i])[:, top:top + h, left:left + w].flatten())
        untouched = torch.ones(32, 32, dtype=torch.bool)
        untouched[top:top + h, left:left + w] = False
        assert torch.equal(out[i][:, untouched], x[i][:, untouched])
    ours = torch.cat(ours)
    torch.manual_seed(0)
    erase = T.RandomErasing(p=1.0, value="random")
    theirs = torch.cat([t[(t != n).any(0).expand_as(t)] for n in normalize(x) for t in [erase(n)]])
    for sample in (ours, theirs):
        assert abs(sample.mean().item()) < 0.03 and abs(sample.std().item() - 1) < 0.03
    # The noise is drawn from the batch generator: the same generator gives the same noise.
    assert torch.equal(erase_all("random", n=4)[1], erase_all("random", n=4)[1])


def test_fill_random_needs_the_std_and_bools_are_no_fill():
    with pytest.raises(ConfigError, match="std"):
        erase_all("random", std=None)
    with pytest.raises(ConfigError, match="erasing_fill"):
        AugmentConfig(erasing_fill=False).validate()
    assert "fill black" in describe_augment(AugmentConfig(erasing_p=0.5, erasing_fill=0))[-1]


# --- reference 000's MixUp/CutMix fade ------------------------------------------------------------

def original_000_alphas(epoch: int, num_epochs: int = 195) -> tuple[float, float] | None:
    """script.ipynb, train_model: per 1-based epoch, (mixup, cutmix) alpha, or None once mixing is off."""
    if epoch >= int(num_epochs * 0.8):
        return None
    return max(0.0, 0.4 * (1 - epoch / num_epochs)), max(0.0, 1.0 * (1 - epoch / num_epochs))


def test_seed000_fade_follows_the_original_formula():
    mixer = build_mixer(load_recipe("seed000").augment, 10)
    steps_per_epoch, epochs = 7, 195
    total = steps_per_epoch * epochs
    for epoch in range(1, epochs + 1):
        original = original_000_alphas(epoch)
        for step in range((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch):
            progress = step / total
            assert mixer.active(progress) == (original is not None), (epoch, step)
            if original is None:
                continue
            # The formula at the epoch's end is the original's value; within the epoch it is at
            # most 1/195 of the starting alpha above it.
            ours = mixer.alphas(progress)
            for o, r, start in zip(ours, original, (0.4, 1.0)):
                assert r <= o <= r + start / epochs + 1e-12
        if original is not None:
            strength = mix_strength(epoch / epochs, "linear_to_end", until=1.0)
            assert (0.4 * strength, 1.0 * strength) == pytest.approx(original, abs=1e-12)


def test_linear_to_end_differs_from_linear():
    assert mix_strength(0.4, "linear_to_end", 0.8) == pytest.approx(0.6)
    assert mix_strength(0.4, "linear", 0.8) == pytest.approx(0.5)
    assert mix_strength(0.8, "linear_to_end", 0.8) == 0.0


# --- augment.order ----------------------------------------------------------------------------------

def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_seed003_runs_jitter_before_autoaugment_as_the_original():
    cfg = load_recipe("seed003").augment
    aug = build_augment(cfg, MEAN)
    assert aug.op_names == ["flip", "crop", "color_jitter", "autoaugment", "rotation"]
    assert describe_augment(cfg)[2].startswith("color jitter") and describe_augment(cfg)[3].startswith("AutoAug")
    x = images(16)
    g = gen(0)
    ref = geometric.random_flip(x, g)
    ref = geometric.random_crop(ref, 4, g, "zeros")
    ref = color.color_jitter(ref, 0.2, 0.2, 0.2, 0.0, g)
    ref = policies.autoaugment_cifar10(ref, g)
    ref = geometric.random_rotation(ref, 15, g)
    assert torch.equal(aug(x, generator=gen(0), epoch=0), ref)


def test_seed004_rotates_before_the_jitter():
    aug = build_augment(load_recipe("seed004").augment, MEAN)
    assert aug.op_names == ["crop", "flip", "rotation", "color_jitter", "perspective"]


def test_default_order_is_unchanged():
    cfg = AugmentConfig(policy="autoaugment", color_jitter=[0.2, 0.2, 0.2, 0.0], rotation=15)
    assert build_augment(cfg, MEAN).op_names == ["crop", "flip", "autoaugment", "color_jitter", "rotation"]


@pytest.mark.parametrize("order", [["crop", "flip"], ["crop"] * 9, ["crop", "flip", "policy", "color_jitter",
                                   "rotation", "perspective", "erasing", "cutout", "resize", "warp"]])
def test_order_must_be_a_permutation_of_every_op(order):
    with pytest.raises(ConfigError, match="augment.order"):
        AugmentConfig(order=order).validate()
