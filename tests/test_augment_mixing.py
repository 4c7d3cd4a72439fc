"""MixUp / CutMix: soft targets, pixel provenance, lambda distribution, decay schedule."""

import pytest
import torch

from cifarkit.augment.mixing import Mixer, cutmix_box
from cifarkit.augment.schedule import mix_strength
from cifarkit.errors import ConfigError

B = 16


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 32, 32, generator=g), torch.arange(B)   # labels = positions: one class each


def gen(seed):
    return torch.Generator().manual_seed(seed)


def partner_and_lam(targets):
    """Recover (perm, lam) from soft targets of labels arange(B)."""
    lam = targets.diagonal()
    off = targets.clone()
    off.fill_diagonal_(0)
    perm = torch.where(off.sum(1) > 0, off.argmax(1), torch.arange(B))
    return perm, lam


def test_mixup_image_is_lam_x_plus_one_minus_lam_partner():
    x, y = batch()
    mixer = Mixer(B, mixup_p=1.0, mixup_alpha=1.0, cutmix_p=0.0, cutmix_alpha=1.0)
    for seed in range(5):
        mixed, targets = mixer(x, y, 0.0, gen(seed))
        assert targets.dtype == torch.float32 and targets.shape == (B, B)
        assert torch.allclose(targets.sum(1), torch.ones(B))
        perm, lam = partner_and_lam(targets)
        assert torch.equal(perm.sort().values, torch.arange(B))
        lam0 = float(lam[perm != torch.arange(B)][0])
        assert 0 < lam0 < 1
        assert torch.allclose(mixed, lam0 * x + (1 - lam0) * x[perm], atol=1e-5)


def test_cutmix_box_pixels_come_from_the_partner_and_lambda_is_area_corrected():
    x, y = batch(1)
    mixer = Mixer(B, mixup_p=0.0, mixup_alpha=1.0, cutmix_p=1.0, cutmix_alpha=1.0)
    saw_box = False
    for seed in range(8):
        mixed, targets = mixer(x, y, 0.3, gen(seed))
        assert torch.allclose(targets.sum(1), torch.ones(B))
        perm, lam = partner_and_lam(targets)
        moved = perm != torch.arange(B)
        box = (mixed != x)[moved].any(0).any(0)        # (H, W) pixels replaced in any image
        if not box.any():
            continue
        saw_box = True
        rows, cols = box.any(1).nonzero().view(-1), box.any(0).nonzero().view(-1)
        assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()    # a rectangle
        assert torch.equal(mixed[..., box], x[perm][..., box])
        assert torch.equal(mixed[..., ~box], x[..., ~box])
        expected_lam = 1 - box.sum().item() / (32 * 32)
        assert torch.allclose(lam[moved], torch.full_like(lam[moved], expected_lam))
    assert saw_box


def test_cutmix_box_is_clipped_and_sized_from_lambda():
    g = gen(0)
    for lam in (0.0, 0.25, 0.5, 0.9, 1.0):
        top, left, bottom, right = cutmix_box(lam, (32, 32), g)
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
        assert bottom - top <= 2 * int(0.5 * (1 - lam) ** 0.5 * 32)


def lambdas(alpha, n=600):
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    mixer = Mixer(4, mixup_p=1.0, mixup_alpha=alpha, cutmix_p=0.0, cutmix_alpha=1.0)
    g = gen(0)
    values = []
    for _ in range(n):
        _, t = mixer(x, y, 0.0, g)
        values.append(float(t[0, 0]) if t[0].max() < 1 else float("nan"))
    v = torch.tensor(values)
    return v[~v.isnan()]


def test_lambda_distribution_is_beta():
    uniform = lambdas(1.0)
    assert abs(uniform.mean() - 0.5) < 0.05 and abs(uniform.var() - 1 / 12) < 0.015
    peaked = lambdas(0.2)
    assert ((peaked < 0.1) | (peaked > 0.9)).float().mean() > 0.5      # Beta(0.2, 0.2) hugs 0 and 1


def test_choice_frequencies_follow_probabilities():
    x, y = batch()
    x = x[..., :8, :8].contiguous()             # small images: 1000 calls stay cheap
    mixer = Mixer(B, mixup_p=0.3, mixup_alpha=1.0, cutmix_p=0.3, cutmix_alpha=1.0)
    g = gen(4)
    kinds = {"none": 0, "mixup": 0, "cutmix": 0}
    for _ in range(1000):
        mixed, targets = mixer(x, y, 0.0, g)
        if torch.equal(targets, torch.eye(B)):
            kinds["none"] += 1
        elif ((mixed == x) | (mixed == x[partner_and_lam(targets)[0]])).all():
            kinds["cutmix"] += 1
        else:
            kinds["mixup"] += 1
    assert 240 < kinds["mixup"] < 360 and 240 < kinds["cutmix"] < 360 and 340 < kinds["none"] < 460


def test_schedule_decay_and_until():
    assert mix_strength(0.0, "none", 1.0) == 1.0
    assert mix_strength(0.79, "none", 0.8) == 1.0
    assert mix_strength(0.8, "none", 0.8) == 0.0
    assert mix_strength(0.4, "linear", 0.8) == pytest.approx(0.5)
    assert mix_strength(0.0, "linear", 0.8) == 1.0
    assert mix_strength(0.9, "linear", 0.8) == 0.0
    assert mix_strength(0.3, "linear", 0.0) == 0.0
    with pytest.raises(ConfigError):
        mix_strength(0.1, "cosine", 1.0)


def test_mixer_respects_decay_and_until():
    x, y = batch()
    mixer = Mixer(B, mixup_p=0.5, mixup_alpha=0.4, cutmix_p=0.5, cutmix_alpha=1.0, decay="linear", until=0.8)
    assert mixer.active(0.0) and mixer.active(0.5)
    assert mixer.alphas(0.4) == pytest.approx((0.2, 0.5))
    assert not mixer.active(0.8) and not mixer.active(1.0)
    mixed, targets = mixer(x, y, 0.85, gen(0))
    assert mixed is x and torch.equal(targets, torch.eye(B))
    near_end = Mixer(B, mixup_p=1.0, mixup_alpha=1.0, cutmix_p=0.0, cutmix_alpha=1.0, decay="linear", until=0.5)
    assert not near_end.active(0.5 - 1e-9)          # effective alpha below 1e-6: no mixing
    off = Mixer(B, 0.0, 1.0, 0.0, 1.0)
    assert not off.active(0.0)


def test_mixer_is_reproducible_and_validates():
    x, y = batch()
    mixer = Mixer(B, 0.5, 1.0, 0.5, 1.0)
    a, ta = mixer(x, y, 0.1, gen(7))
    b, tb = mixer(x, y, 0.1, gen(7))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    outs = {tuple(mixer(x, y, 0.1, gen(s))[1].flatten().tolist()) for s in range(6)}
    assert len(outs) > 1
    for bad in (dict(mixup_p=0.7, cutmix_p=0.5), dict(mixup_alpha=0.0), dict(decay="step"), dict(until=1.5)):
        kwargs = dict(num_classes=10, mixup_p=0.5, mixup_alpha=1.0, cutmix_p=0.5, cutmix_alpha=1.0) | bad
        with pytest.raises(ConfigError):
            Mixer(**kwargs)


def test_mixer_works_on_channels_last():
    x, y = batch()
    mixer = Mixer(B, 0.0, 1.0, 1.0, 1.0)
    out_cl, t_cl = mixer(x.contiguous(memory_format=torch.channels_last), y, 0.0, gen(2))
    out, t = mixer(x, y, 0.0, gen(2))
    assert torch.equal(out_cl, out) and torch.equal(t_cl, t)


class FixedMixUp:
    """torchvision's v2 MixUp / CutMix with their random draws replaced by given ones."""

    @staticmethod
    def mixup(lam):
        from torchvision.transforms import v2

        class Fixed(v2.MixUp):
            def make_params(self, flat_inputs):
                return {"lam": lam}
        return Fixed(num_classes=B)

    @staticmethod
    def cutmix(lam, centre_x, centre_y):
        from torchvision.transforms import v2
        draws = iter([torch.tensor([centre_x]), torch.tensor([centre_y])])

        class Fixed(v2.CutMix):
            def make_params(self, flat_inputs):
                self._dist = type("Lam", (), {"sample": staticmethod(lambda shape: torch.tensor(lam))})()
                real_randint = torch.randint
                torch.randint = lambda *args, **kwargs: next(draws)   # the centre torchvision draws
                try:
                    return super().make_params(flat_inputs)
                finally:
                    torch.randint = real_randint
        return Fixed(num_classes=B)


def roll_partners(monkeypatch):
    """Make our mixer pair image i with image i - 1, as torchvision's batch.roll(1, 0) does."""
    import cifarkit.augment.mixing as mixing
    real = torch.randperm
    monkeypatch.setattr(mixing.torch, "randperm", lambda n, **kw: (torch.arange(n) - 1) % n)
    return real


@pytest.mark.parametrize("lam", [0.2, 0.65])
def test_mixup_matches_torchvision_v2_mixup_for_the_same_lambda_and_partners(monkeypatch, lam):
    import cifarkit.augment.mixing as mixing
    x, y = batch(3)
    monkeypatch.setattr(mixing, "sample_beta", lambda alpha, generator: lam)
    roll_partners(monkeypatch)
    ours, our_targets = Mixer(B, mixup_p=1.0, mixup_alpha=1.0, cutmix_p=0.0, cutmix_alpha=1.0)(x, y, 0.0, gen(0))
    theirs, their_targets = FixedMixUp.mixup(lam)(x.clone(), y)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_targets, their_targets)


@pytest.mark.parametrize("lam, seed", [(0.3, 0), (0.7, 1), (0.05, 2)])
def test_cutmix_matches_torchvision_v2_cutmix_for_the_same_lambda_centre_and_partners(monkeypatch, lam, seed):
    import cifarkit.augment.mixing as mixing
    x, y = batch(4)
    monkeypatch.setattr(mixing, "sample_beta", lambda alpha, generator: lam)
    roll_partners(monkeypatch)
    # the box centre our mixer draws from its generator (after its coin and permutation draws)
    g = gen(seed)
    torch.rand(1, generator=g)
    centre = torch.randint(0, 2**31 - 1, (2,), generator=g).tolist()
    cy, cx = centre[0] % 32, centre[1] % 32
    ours, our_targets = Mixer(B, mixup_p=0.0, mixup_alpha=1.0, cutmix_p=1.0, cutmix_alpha=1.0)(x, y, 0.0, gen(seed))
    theirs, their_targets = FixedMixUp.cutmix(lam, cx, cy)(x.clone(), y)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_targets, their_targets)
    assert not torch.equal(ours, x)                      # a box really was pasted
