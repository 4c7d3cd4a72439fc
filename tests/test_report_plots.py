"""The report's figures: the throughput panel of the training curves, and the image grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cifarkit.errors import DataError
from cifarkit.evaluate.plots import image_grid_figure, plot_image_grid, training_curves_figure


def test_training_curves_have_an_images_per_second_panel():
    records = [{"epoch": e, "train_loss": 1 / e, "lr": 0.1, "images_per_second": 1000.0 + 10 * e} for e in (1, 2, 3)]
    records.append({"epoch": 3, "images_per_second": 1234.5})        # a resumed epoch: the later value wins
    fig = training_curves_figure(records)
    panel = next(ax for ax in fig.axes if ax.get_title() == "images/s")
    (line,) = panel.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == [1010.0, 1020.0, 1234.5]
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate", "images/s"]


def test_image_grid_draws_the_real_pixels_with_their_captions(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    captions = [f"true c{i}\npredicted c{i + 1}\n0.9{i}" for i in range(5)]
    fig = image_grid_figure(images, captions, columns=3)
    assert len(fig.axes) == 5
    for ax, image, caption in zip(fig.axes, images, captions):
        (shown,) = ax.get_images()
        np.testing.assert_array_equal(shown.get_array(), image.transpose(1, 2, 0))
        assert shown.get_interpolation() == "nearest" and ax.get_title() == caption
    out = plot_image_grid(images, captions, tmp_path / "grid.png", columns=3)
    with Image.open(out) as png:
        assert png.format == "PNG" and np.asarray(png.convert("L")).std() > 5


def test_image_grid_refuses_what_is_not_uint8_nchw(tmp_path):
    with pytest.raises(DataError, match="uint8"):
        image_grid_figure(np.zeros((2, 32, 32, 3), np.uint8), ["a", "b"])
    with pytest.raises(DataError, match="captions"):
        image_grid_figure(np.zeros((2, 3, 32, 32), np.uint8), ["a"])
