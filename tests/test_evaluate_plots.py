"""Plots: valid PNG files, tolerant of partial inputs, and atomic when saving fails."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cifarkit import CIFAR10_CLASSES
from cifarkit.errors import CifarkitError, DataError
from cifarkit.evaluate.metrics import confusion_matrix, roc_curves
from cifarkit.evaluate.plots import plot_confusion_matrix, plot_roc_curves, plot_training_curves

NAMES = list(CIFAR10_CLASSES)


def assert_png(path, min_side=300):
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        image.load()  # decodes the whole file: fails on a truncated one
        pixels = np.asarray(image.convert("L"))
    assert min_side <= width <= 4000 and min_side <= height <= 4000
    assert pixels.std() > 5  # something was drawn, not a blank canvas


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 300)
    logits = rng.normal(size=(300, 10))
    logits[np.arange(300), labels] += 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_png(tmp_path, predictions, normalize):
    probs, labels = predictions
    cm = confusion_matrix(probs, labels, 10)
    out = plot_confusion_matrix(cm, NAMES, tmp_path / "plots" / "cm.png", title="base", normalize=normalize)
    assert out == tmp_path / "plots" / "cm.png"
    assert_png(out)
    assert leftovers(out.parent) == []


def test_confusion_matrix_of_many_classes_and_an_empty_row(tmp_path):
    cm = np.random.default_rng(1).integers(0, 20, (100, 100))
    cm[5] = 0  # a class without samples must not divide by zero
    assert_png(plot_confusion_matrix(cm, [f"c{i}" for i in range(100)], tmp_path / "cm100.png"))


def test_roc_png(tmp_path, predictions):
    probs, labels = predictions
    roc = roc_curves(probs, labels, 10)
    out = plot_roc_curves(roc, NAMES, tmp_path / "roc.png", title="EMA model")
    assert_png(out)


def test_roc_png_with_an_undefined_auc(tmp_path, predictions):
    probs, labels = predictions
    labels = np.where(labels == 9, 0, labels)
    roc = roc_curves(probs, labels, 10)
    assert_png(plot_roc_curves(roc, NAMES, tmp_path / "roc.png"))


def test_training_curves_png_tolerates_missing_keys(tmp_path):
    records = [{"epoch": e, "train_loss": 2 / e, "train_acc": 0.1 * e, "lr": 0.1 * (1 - e / 10)}
               for e in range(1, 10)]
    records[3]["val_acc"] = 0.4
    records += [{"epoch": 9, "ema_val_acc": 0.8, "val_loss": None}, {"note": "no epoch"}]
    assert_png(plot_training_curves(records, tmp_path / "curves.png"))


def test_training_curves_png_of_no_records(tmp_path):
    assert_png(plot_training_curves([], tmp_path / "empty.png"), min_side=200)


def test_uncreatable_directory_raises_cleanly_and_leaves_nothing(tmp_path, predictions):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    cm = confusion_matrix(*predictions, 10)
    with pytest.raises(CifarkitError, match="cannot write plot"):
        plot_confusion_matrix(cm, NAMES, blocker / "sub" / "cm.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]
    assert blocker.read_text() == "a file where a directory should be"


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")

    def broken_savefig(self, f, **kwargs):
        f.write(b"\x89PNG partial")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_training_curves([{"epoch": 1, "train_loss": 1.0}], target)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_mismatched_inputs_raise_data_errors(tmp_path, predictions):
    probs, labels = predictions
    with pytest.raises(DataError, match="shape"):
        plot_confusion_matrix(np.zeros((3, 3)), NAMES, tmp_path / "cm.png")
    with pytest.raises(DataError, match="one curve per class"):
        plot_roc_curves(roc_curves(probs, labels, 10), NAMES[:5], tmp_path / "roc.png")
    assert list(tmp_path.iterdir()) == []
