"""load_image: any PIL image in, (3, 32, 32) uint8 out, with clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cifarkit.data.images import load_image
from cifarkit.errors import DataError


def rgb_array(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_32x32_png_is_exact(tmp_path):
    pixels = rgb_array(32, 32)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image, resized = load_image(tmp_path / "x.png")
    assert not resized and image.shape == (3, 32, 32) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert np.array_equal(image, pixels.transpose(2, 0, 1))


def test_larger_image_is_resized_like_torchvision_bicubic_antialias(tmp_path):
    # smooth content so that PIL's and torchvision's bicubic kernels agree closely
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack([x * 2, y * 2, (x + y)], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    image, resized = load_image(tmp_path / "big.png")
    assert resized and image.shape == (3, 32, 32)
    reference = TF.resize(torch.from_numpy(pixels).permute(2, 0, 1), [32, 32],
                          interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    assert np.abs(image.astype(int) - reference.numpy().astype(int)).max() <= 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_other_modes_become_rgb(tmp_path, mode):
    source = Image.fromarray(rgb_array(32, 32, seed=1))
    converted = source.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    converted.save(path)
    image, resized = load_image(path)
    assert image.shape == (3, 32, 32) and not resized
    if mode == "L":   # grey: all channels equal the luminance
        expected = np.asarray(converted)
        assert all(np.array_equal(image[c], expected) for c in range(3))
    if mode == "RGBA":
        assert np.array_equal(image, np.asarray(source).transpose(2, 0, 1))


def test_jpeg_and_grayscale_resize(tmp_path):
    Image.fromarray(rgb_array(40, 20)).convert("L").save(tmp_path / "g.jpg")
    image, resized = load_image(tmp_path / "g.jpg")
    assert resized and image.shape == (3, 32, 32)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(DataError, match="is not an image file"):
        load_image(tmp_path / "text.png")
    Image.fromarray(rgb_array(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="damaged or unsupported image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(DataError):
        load_image(tmp_path)          # a directory
