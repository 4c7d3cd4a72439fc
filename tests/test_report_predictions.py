"""predictions.npz: what the report keeps of the selected model's test predictions."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from cifarkit.errors import DataError
from cifarkit.evaluate.predictions import (PREDICTIONS_FILE, load_predictions, most_confidently_wrong,
                                           save_predictions)


def random_predictions(n=300, c=10, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, c, n)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return probs, labels, images


def test_most_confidently_wrong_is_the_brute_force_order():
    probs, labels, _ = random_predictions()
    wrong = [i for i in range(len(labels)) if probs[i].argmax() != labels[i]]
    expected = sorted(wrong, key=lambda i: (-probs[i].max(), i))[:10]
    assert most_confidently_wrong(probs, labels, 10).tolist() == expected
    everything_right = np.eye(10)[labels]
    assert most_confidently_wrong(everything_right, labels).tolist() == []


def test_save_then_load_without_pickle(tmp_path):
    probs, labels, images = random_predictions()
    classes = [f"c{i}" for i in range(10)]
    path = save_predictions(tmp_path, "ema", probs, labels, images, classes, k=12)
    assert path == tmp_path / PREDICTIONS_FILE
    with np.load(path, allow_pickle=False) as raw:      # plain arrays only
        assert raw["probs"].dtype == np.float32 and raw["labels"].dtype == np.int64
        assert raw["wrong_images"].dtype == np.uint8 and raw["wrong_images"].shape == (12, 3, 32, 32)
    p = load_predictions(tmp_path)
    assert p.kind == "ema" and p.classes == classes
    np.testing.assert_array_equal(p.probs, probs.astype(np.float32))
    np.testing.assert_array_equal(p.labels, labels)
    np.testing.assert_array_equal(p.wrong_indices, most_confidently_wrong(probs.astype(np.float32), labels, 12))
    np.testing.assert_array_equal(p.wrong_images, images[p.wrong_indices])
    assert sorted(x.name for x in tmp_path.iterdir()) == [PREDICTIONS_FILE]     # no temporary left


def test_a_run_without_the_file_gives_none(tmp_path):
    assert load_predictions(tmp_path) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing key", "bad index"])
def test_a_damaged_file_is_a_clear_error(tmp_path, damage):
    probs, labels, images = random_predictions()
    path = save_predictions(tmp_path, "final", probs, labels, images)
    if damage == "garbage":
        path.write_bytes(b"not a zip")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "missing key":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("probs.npy", b"")
    else:
        np.savez(path.open("wb"), kind=np.array("final"), classes=np.array([str(i) for i in range(10)]),
                 probs=probs.astype(np.float32), labels=labels, wrong_indices=np.array([10_000]),
                 wrong_images=images[:1])
    with pytest.raises(DataError, match="predictions"):
        load_predictions(tmp_path)


def test_bad_arrays_are_refused_before_writing(tmp_path):
    probs, labels, images = random_predictions()
    with pytest.raises(DataError):
        save_predictions(tmp_path, "final", probs, labels[:-1], images)
    with pytest.raises(DataError, match="uint8"):
        save_predictions(tmp_path, "final", probs, labels, images.astype(np.float32))
    assert list(tmp_path.iterdir()) == []
