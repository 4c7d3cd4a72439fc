"""build_augment / build_mixer / describe_augment: order, switches, and that training images change."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit.augment import color, erasing, geometric, policies
from cifarkit.augment.mixing import Mixer
from cifarkit.augment.pipeline import build_augment, build_mixer, describe_augment
from cifarkit.config import AugmentConfig
from cifarkit.errors import ConfigError

MEAN = (0.49139968, 0.48215841, 0.44653091)
SEED002 = dict(crop_padding=4, flip="random", policy="randaugment", randaugment_ops=2, randaugment_magnitude=9,
               erasing_p=0.5, erasing_scale=[0.02, 0.33], erasing_ratio=[0.3, 3.3])
EVERYTHING = dict(crop_padding=4, crop_mode="reflect", flip="random", policy="autoaugment",
                  color_jitter=[0.2, 0.2, 0.2, 0.05], rotation=15, perspective=0.1, perspective_p=0.5,
                  erasing_p=0.25, cutout=8)


def images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255


def gen(seed):
    return torch.Generator().manual_seed(seed)


def changed_fraction(before, after):
    return (before != after).flatten(1).any(1).float().mean().item()


def test_no_augmentation_gives_none():
    off = AugmentConfig(crop_padding=0, flip="none")
    assert build_augment(off, MEAN) is None
    assert describe_augment(off) == []
    assert build_mixer(off, 10) is None


def test_ops_run_in_the_documented_order():
    aug = build_augment(AugmentConfig(**EVERYTHING), MEAN)
    assert aug.op_names == ["crop", "flip", "autoaugment", "color_jitter", "rotation", "perspective",
                            "erasing", "cutout"]
    x = images(32)
    g = gen(0)
    fill = torch.tensor(MEAN)
    ref = geometric.random_crop(x, 4, g, "reflect")
    ref = geometric.random_flip(ref, g)
    ref = policies.autoaugment_cifar10(ref, g)
    ref = color.color_jitter(ref, 0.2, 0.2, 0.2, 0.05, g)
    ref = geometric.random_rotation(ref, 15, g)
    ref = geometric.random_perspective(ref, 0.1, 0.5, g)
    ref = erasing.random_erasing(ref, 0.25, [0.02, 0.33], [0.3, 3.3], fill, g)
    ref = erasing.cutout(ref, 8, fill, g)
    assert torch.equal(aug(x, generator=gen(0), epoch=0, indices=None), ref)


def test_seed002_recipe_really_changes_training_images():
    aug = build_augment(AugmentConfig(**SEED002), MEAN)
    assert aug.op_names == ["crop", "flip", "randaugment", "erasing"]
    x = images(256)
    out = aug(x, generator=gen(0), epoch=0, indices=torch.arange(256))
    assert changed_fraction(x, out) > 0.9
    assert out.min() >= 0 and out.max() <= 1
    again = aug(x, generator=gen(1), epoch=0, indices=torch.arange(256))
    assert changed_fraction(out, again) > 0.9                      # a fresh draw every batch


def test_every_op_on_keeps_range_and_channels_last():
    aug = build_augment(AugmentConfig(**EVERYTHING), MEAN)
    x = images(64)
    cl = x.contiguous(memory_format=torch.channels_last)
    out_cl = aug(cl, generator=gen(2), epoch=0, indices=None)
    out = aug(x, generator=gen(2), epoch=0, indices=None)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out_cl, out, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1
    copies = x[:1].expand(64, -1, -1, -1).contiguous()
    distinct = {tuple(r.tolist()) for r in aug(copies, generator=gen(3), epoch=0, indices=None).reshape(64, -1)}
    assert len(distinct) == 64


def test_erasing_and_cutout_paint_the_mean():
    aug = build_augment(AugmentConfig(crop_padding=0, flip="none", cutout=10), MEAN)
    x = torch.zeros(16, 3, 32, 32)
    out = aug(x, generator=gen(0), epoch=0, indices=None)
    painted = (out != 0).any(1)
    assert painted.flatten(1).any(1).all()
    assert torch.allclose(out.permute(0, 2, 3, 1)[painted], torch.tensor(MEAN).expand(int(painted.sum()), 3))


def test_alternate_flip_uses_epoch_and_indices():
    aug = build_augment(AugmentConfig(crop_padding=0, flip="alternate"), MEAN, seed=3)
    x, idx = images(128), torch.arange(1000, 1128)
    e0 = aug(x, generator=gen(0), epoch=0, indices=idx)
    e1 = aug(x, generator=gen(0), epoch=1, indices=idx)
    flipped0, flipped1 = (e0 != x).flatten(1).any(1), (e1 != x).flatten(1).any(1)
    assert torch.equal(flipped0, ~flipped1)
    with pytest.raises(ValueError, match="indices"):
        aug(x, generator=gen(0), epoch=0, indices=None)


def test_build_mixer_and_descriptions():
    cfg = AugmentConfig(**SEED002, mixup_p=0.5, mixup_alpha=0.4, cutmix_p=0.3, cutmix_alpha=1.0,
                        mix_decay="linear", mix_until=0.8)
    mixer = build_mixer(cfg, 100)
    assert isinstance(mixer, Mixer)
    assert (mixer.num_classes, mixer.mixup_p, mixer.mixup_alpha, mixer.cutmix_p, mixer.decay, mixer.until) == \
        (100, 0.5, 0.4, 0.3, "linear", 0.8)
    lines = describe_augment(cfg)
    assert len(lines) == 6
    assert lines[0].startswith("random crop") and "RandAugment (2 ops, magnitude 9" in lines[2]
    assert lines[4].startswith("MixUp") and "80%" in lines[4] and lines[5].startswith("CutMix")
    assert describe_augment(AugmentConfig(**EVERYTHING))[2] == "AutoAugment (CIFAR10 policy)"


def test_invalid_config_is_rejected():
    with pytest.raises(ConfigError):
        build_augment(AugmentConfig(rotation=-5), MEAN)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Just enough to read a CIFAR batch: numpy array reconstruction and nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


def _cifar_archive():
    root = Path(os.environ["CIFARKIT_DATA"]) if os.environ.get("CIFARKIT_DATA") else \
        Path(__file__).parents[2] / "shared" / "datasets"
    return root / "cifar-10-python.tar.gz"


@pytest.mark.realdata
@pytest.mark.skipif(not _cifar_archive().is_file(), reason="offline CIFAR-10 copy not found")
def test_real_cifar_images_are_augmented():
    with tarfile.open(_cifar_archive()) as archive:
        member = next(m for m in archive if m.name.startswith("cifar-10-batches-py/data_batch_"))
        batch = _NumpyOnlyUnpickler(io.BytesIO(archive.extractfile(member).read()), encoding="latin1").load()
    pixels = np.asarray(batch["data"][:256], dtype=np.uint8).reshape(-1, 3, 32, 32)
    x = torch.from_numpy(pixels).float() / 255
    for cfg in (SEED002, EVERYTHING, dict(flip="alternate", cutout=12)):
        out = build_augment(AugmentConfig(**cfg), MEAN)(x, generator=gen(0), epoch=1, indices=torch.arange(256))
        assert changed_fraction(x, out) > 0.85
        assert (out - x).abs().mean() > 0.02
        assert out.min() >= 0 and out.max() <= 1


def test_progressive_resize_downscales_early_epochs_like_torchvision():
    from torchvision.transforms.v2 import functional as TF

    from cifarkit.augment.schedule import resize_size_at
    schedule = [[24, 2], [28, 3]]
    assert [resize_size_at(schedule, e) for e in range(5)] == [24, 24, 28, None, None]
    cfg = AugmentConfig(crop_padding=2, crop_mode="reflect", flip="none", resize_schedule=schedule)
    plain = build_augment(AugmentConfig(crop_padding=2, crop_mode="reflect", flip="none"), MEAN)
    aug = build_augment(cfg, MEAN)
    assert aug.op_names == ["crop", "resize"]
    x = images(6).contiguous(memory_format=torch.channels_last)
    for epoch, side in ((0, 24), (2, 28), (3, 32)):
        out = aug(x, generator=gen(epoch), epoch=epoch, indices=None)
        cropped = plain(x, generator=gen(epoch), epoch=epoch, indices=None)
        assert out.shape == (6, 3, side, side)
        assert out.is_contiguous(memory_format=torch.channels_last)
        expected = cropped if side == 32 else TF.resize(cropped, [side, side], antialias=True)
        torch.testing.assert_close(out, expected)
    assert "downscale to 24x24 (antialiased) before epoch 2" in describe_augment(cfg)


@pytest.mark.parametrize("schedule", [[[24]], [[4, 2]], [[24, 3], [28, 3]], [[24, 0]]])
def test_bad_resize_schedules_are_rejected(schedule):
    with pytest.raises(ConfigError, match="resize_schedule"):
        build_augment(AugmentConfig(resize_schedule=schedule), MEAN)
