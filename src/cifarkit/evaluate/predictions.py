"""The selected model's test-set predictions, kept in the run directory for the report.

`RUN/predictions.npz` (numpy arrays only, read back with allow_pickle=False):

    kind            str, the weights or ensemble the probabilities come from
    classes         str (C,), class names
    probs           float32 (N, C), test-set class probabilities
    labels          int64 (N,), true classes
    wrong_indices   int64 (k,), test indices of the k misclassified images with the highest
                    top-1 probability, most confident first
    wrong_images    uint8 (k, 3, 32, 32), their pixels (the test set itself is not copied)

The probabilities of the wrong images are probs[wrong_indices].
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarkit.errors import DataError
from cifarkit.fsio import atomic_open

PREDICTIONS_FILE = "predictions.npz"
WRONG_KEPT = 32            # enough for a 4 x 8 grid in the report


@dataclass
class Predictions:
    kind: str
    classes: list[str]
    probs: np.ndarray
    labels: np.ndarray
    wrong_indices: np.ndarray
    wrong_images: np.ndarray


def most_confidently_wrong(probs: np.ndarray, labels: np.ndarray, k: int = WRONG_KEPT) -> np.ndarray:
    """Indices of at most k misclassified samples, highest top-1 probability first (ties: lower index)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    confidence = probs[wrong].max(1)
    order = np.lexsort((wrong, -confidence))          # last key sorts first
    return wrong[order][:k].astype(np.int64)


def save_predictions(run_dir, kind: str, probs, labels, images, classes=None, k: int = WRONG_KEPT) -> Path:
    """Write RUN/predictions.npz atomically; `images` are the uint8 (N, 3, H, W) test images."""
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    images = np.asarray(images)
    if probs.ndim != 2 or labels.shape != (len(probs),) or len(images) != len(probs):
        raise DataError(f"predictions need probs (N, C), labels (N,) and N images; got {probs.shape}, "
                        f"{labels.shape} and {len(images)} images")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"test images must be uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(probs.shape[1])]
    wrong = most_confidently_wrong(probs, labels, k)
    path = Path(run_dir) / PREDICTIONS_FILE
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, kind=np.array(kind), classes=np.array(classes), probs=probs, labels=labels,
                            wrong_indices=wrong, wrong_images=np.ascontiguousarray(images[wrong]))
    return path


def load_predictions(run_dir) -> Predictions | None:
    """RUN/predictions.npz, or None where the run was evaluated before cifarkit wrote it."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            p = Predictions(kind=str(data["kind"]), classes=[str(c) for c in data["classes"]],
                            probs=data["probs"], labels=data["labels"],
                            wrong_indices=data["wrong_indices"], wrong_images=data["wrong_images"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is corrupt or not a cifarkit predictions file ({str(e)[:120]}); "
                        f"run `cifarkit evaluate {run_dir}` to write it again") from None
    n, c = p.probs.shape if p.probs.ndim == 2 else (-1, -1)
    if (n < 0 or p.labels.shape != (n,) or len(p.classes) != c or p.wrong_images.ndim != 4
            or len(p.wrong_images) != len(p.wrong_indices) or p.wrong_images.dtype != np.uint8
            or (len(p.wrong_indices) and not 0 <= p.wrong_indices.min() <= p.wrong_indices.max() < n)):
        raise DataError(f"{path} holds arrays of inconsistent shapes; run `cifarkit evaluate {run_dir}` again")
    return p
