"""Test-time augmentation: the views, their weights, and prediction with them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.errors import ConfigError, DataError
from cifarkit.evaluate.inference import infer
from cifarkit.evaluate.tta import TTA_MODES, tta_views

VIEW_COUNTS = {"none": 1, "flip": 2, "flip_translate": 6, "view8": 8, "views000": 6, "views004": 8}


def small_net(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes),
    )


class FlipInvariant(nn.Module):
    """Sees an image and its mirror image identically, by construction."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + self.inner(x.flip(-1))


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", TTA_MODES)
def test_views_have_right_count_shape_and_weights(images, mode):
    views = tta_views(images, mode)
    assert len(views) == VIEW_COUNTS[mode]
    assert all(v.shape == images.shape and v.dtype == images.dtype for v, _ in views)
    assert sum(w for _, w in views) == pytest.approx(1.0)
    assert all(w > 0 for _, w in views)
    assert torch.equal(views[0][0], images)  # the identity comes first
    # Distinct views, not copies of one another.
    for i, (a, _) in enumerate(views):
        assert not any(torch.equal(a, b) for b, _ in views[i + 1:])


@pytest.mark.parametrize("mode", TTA_MODES)
def test_views_keep_channels_last(images, mode):
    x = images.contiguous(memory_format=torch.channels_last)
    for view, _ in tta_views(x, mode):
        assert view.is_contiguous(memory_format=torch.channels_last)
        assert not view.is_contiguous()


def test_flip_view_is_a_mirror_image(images):
    (ident, w0), (flipped, w1) = tta_views(images, "flip")
    assert (w0, w1) == (0.5, 0.5)
    assert torch.equal(flipped[..., :, 0], images[..., :, -1])
    assert torch.equal(flipped, images.flip(-1))


def test_translated_views_equal_shifted_image_in_interior(images):
    views = tta_views(images, "flip_translate")
    weights = [w for _, w in views]
    assert weights == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    down_right, up_left = views[2][0], views[4][0]
    assert torch.equal(down_right[..., 1:, 1:], images[..., :-1, :-1])
    assert torch.equal(up_left[..., :-1, :-1], images[..., 1:, 1:])
    # The border that comes into view is a reflection: the new row 0 is the old row 1.
    assert torch.equal(down_right[..., 0, 1:], images[..., 1, :-1])
    # Views 3 and 5 are the mirror images of the shifted views.
    assert torch.equal(views[3][0], down_right.flip(-1))
    assert torch.equal(views[5][0], up_left.flip(-1))


def test_view8_views_and_weights(images):
    views = tta_views(images, "view8")
    assert [w for _, w in views] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert torch.equal(views[2][0][..., 2:, 2:], images[..., :-2, :-2])
    assert torch.equal(views[4][0][..., :-2, :-2], images[..., 2:, 2:])
    # The zoom view of a constant image is the same constant image.
    flat = torch.full((2, 3, 16, 16), 0.7)
    assert torch.allclose(tta_views(flat, "view8")[6][0], flat)


def test_mode_none_equals_plain_softmax(images):
    model = small_net().eval()
    expected = F.softmax(model(images), dim=1)
    probs = infer(model, images, mode="none")
    assert probs.dtype == torch.float32 and probs.shape == (6, 10)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(infer(model, images, output="logits", mode="none"), model(images))


def test_flip_mode_equals_none_on_flip_invariant_model(images):
    model = FlipInvariant(small_net())
    none = infer(model, images, mode="none")
    flip = infer(model, images, mode="flip")
    torch.testing.assert_close(flip, none)
    # ...whereas on an ordinary model flipping changes the prediction.
    plain = small_net()
    assert not torch.allclose(infer(plain, images, mode="flip"), infer(plain, images))


def test_flip_translate_logits_match_airbench_formula(images):
    model = small_net().eval()

    def mirror(x):
        return 0.5 * model(x) + 0.5 * model(x.flip(-1))

    padded = F.pad(images, (1,) * 4, mode="reflect")
    shifted = [padded[:, :, 0:16, 0:16], padded[:, :, 2:18, 2:18]]
    expected = 0.5 * mirror(images) + 0.5 * torch.stack([mirror(s) for s in shifted]).mean(0)
    torch.testing.assert_close(infer(model, images, output="logits", mode="flip_translate"), expected)


@pytest.mark.parametrize("mode", TTA_MODES)
def test_probs_are_a_distribution(images, mode):
    probs = infer(small_net(), images, mode=mode)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6))
    assert (probs >= 0).all()


def test_loader_tensor_and_batch_size_agree(images):
    model = small_net()
    whole = infer(model, images, mode="flip_translate")
    chunked = infer(model, images, mode="flip_translate", batch_size=4)
    labels = torch.arange(6)
    loader = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    from_loader = infer(model, loader, mode="flip_translate")
    images_only = infer(model, [images[:4], images[4:]], mode="flip_translate")
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(from_loader, whole)
    torch.testing.assert_close(images_only, whole)
    # A channels_last batch gives the same numbers.
    cl = infer(model, images.contiguous(memory_format=torch.channels_last), mode="flip_translate")
    torch.testing.assert_close(cl, whole)


@pytest.mark.parametrize("was_training", [True, False])
def test_model_runs_in_eval_mode_and_mode_is_restored(images, was_training):
    model = small_net()
    model.train(was_training)
    first = infer(model, images)
    second = infer(model, images)
    # Dropout off and BN running statistics used: deterministic and unchanged.
    torch.testing.assert_close(first, second)
    assert model.training is was_training
    assert all(m.training is was_training for m in model.modules())
    bn = model[1]
    assert torch.equal(bn.running_mean, torch.zeros(8))  # no statistics were updated


def test_autocast_bfloat16_returns_float32_close_to_full_precision(images):
    model = small_net()
    full = infer(model, images, mode="flip")
    low = infer(model, images, mode="flip", precision="bf16")
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=3e-2, rtol=0)


def test_no_gradients_are_recorded(images):
    model = small_net()
    probs = infer(model, images.requires_grad_(), mode="flip")
    assert not probs.requires_grad


def test_bad_inputs_raise_clear_errors(images):
    model = small_net()
    with pytest.raises(ConfigError, match="unknown test-time augmentation mode 'mirror'"):
        infer(model, images, mode="mirror")
    with pytest.raises(ConfigError):
        tta_views(images, "flipflop")
    with pytest.raises(DataError, match="no images"):
        infer(model, images[:0])
    with pytest.raises(ConfigError, match="unknown inference output 'scores'"):
        infer(model, images, output="scores")
    with pytest.raises(DataError, match=r"\(B, C, H, W\)"):
        tta_views(images[0], "flip")
    with pytest.raises(DataError, match="at least 5x5"):
        tta_views(torch.zeros(1, 3, 4, 4), "view8")
    with pytest.raises(DataError, match="batches of images"):
        infer(model, [None])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_channels_last_matches_cpu(images):
    model = small_net()
    cpu = infer(model, images, mode="view8")
    model.cuda()
    gpu = infer(model, images.contiguous(memory_format=torch.channels_last), mode="view8",
                device="cuda", precision="fp16")
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu, cpu, atol=1e-2, rtol=0)


def test_selective_tta_gives_full_views_to_the_least_confident_and_two_views_to_the_rest():
    model = small_net().eval()
    x = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    full = infer(model, x, mode="flip_translate", batch_size=40)
    two = infer(model, x, mode="flip", batch_size=40)
    chosen = infer(model, x, mode="flip_translate", batch_size=40, fraction=0.25)
    top2 = two.topk(2, dim=1).values
    least_confident = set((top2[:, 0] - top2[:, 1]).argsort()[:10].tolist())
    for i in range(40):
        torch.testing.assert_close(chosen[i], full[i] if i in least_confident else two[i])
    assert not torch.allclose(full, two)               # the shifted views really change scores
    torch.testing.assert_close(infer(model, x, mode="flip_translate", fraction=1.0), full)
    # per batch: 0.25 of each 20-image batch (5 each), ranked within its own batch
    per_batch = infer(model, x, output="logits", mode="flip_translate", batch_size=20, fraction=0.25)
    full_logits = infer(model, x, output="logits", mode="flip_translate", batch_size=20)
    assert sum(torch.allclose(a, b) for a, b in zip(per_batch, full_logits)) >= 10
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            infer(model, x, mode="flip_translate", fraction=bad)
