"""Figures for a run's report: confusion matrix, ROC curves, training curves, image grids, as PNG files.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), which renders
through the Agg backend without pyplot: no screen is needed, and a user's own pyplot backend
(e.g. in a notebook) is left alone. Every PNG is written atomically, so a failed save leaves
neither a partial file nor a temporary one behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cifarkit.errors import CifarkitError, DataError
from cifarkit.fsio import atomic_open

_DPI = 120
_ANNOTATE_MAX_CLASSES = 20  # beyond this, per-cell numbers and tick labels become unreadable
_LEGEND_MAX_CLASSES = 20


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=_DPI)
    except OSError as e:
        raise CifarkitError(f"cannot write plot '{path}': {e.strerror or e}") from e
    return path


def _label_ticks(ax: Any, class_names: Sequence[str]) -> None:
    n = len(class_names)
    if n > _ANNOTATE_MAX_CLASSES:
        return
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))


def plot_confusion_matrix(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    normalize: bool = True,
) -> Path:
    """Draw a confusion matrix (rows = true class) as a heat map; with `normalize`, rows sum to 1.

    Cells are annotated with their value up to 20 classes. Returns the written path.
    """
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise DataError(f"confusion matrix has shape {cm.shape} but there are {n} class names")
    values = cm.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = max(5.0, min(0.6 * n + 2.0, 11.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8)
    _label_ticks(ax, class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or ("confusion matrix (row-normalized)" if normalize else "confusion matrix"))
    if n <= _ANNOTATE_MAX_CLASSES:
        # Light text on the dark half of the colour scale.
        threshold = 0.5 if normalize else values.max() / 2
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > threshold else "black")
    return _save(fig, path)


def plot_roc_curves(roc: dict, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Draw the one-vs-rest ROC curve of every class, as returned by metrics.roc_curves.

    The legend gives each class's AUC (up to 20 classes); the title gives the macro AUC.
    """
    n = len(class_names)
    if any(len(roc.get(key, ())) != n for key in ("fpr", "tpr", "auc")):
        raise DataError(f"the ROC data does not hold one curve per class for {n} class names")
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.add_subplot()
    colors = _class_colors(n)
    for c, name in enumerate(class_names):
        auc = roc["auc"][c]
        label = f"{name} (AUC {auc:.3f})" if math.isfinite(auc) else f"{name} (AUC undefined)"
        ax.plot(roc["fpr"][c], roc["tpr"][c], color=colors[c], linewidth=1.2, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    macro = roc.get("macro_auc", math.nan)
    suffix = f"macro AUC {macro:.4f}" if macro is not None and math.isfinite(macro) else ""
    ax.set_title(" - ".join(part for part in (title or "ROC curves (one vs rest)", suffix) if part))
    if n <= _LEGEND_MAX_CLASSES:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _class_colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric, skipping records without it or with a non-number."""
    xs, ys = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(record["epoch"])
            ys.append(float(value))
    return xs, ys


def merge_by_epoch(records: Sequence[dict]) -> list[dict]:
    # A resumed run logs the epochs after its last checkpoint again: for a key logged twice in an
    # epoch the later value wins, while keys from separate lines of one epoch are combined.
    by_epoch: dict[Any, dict] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("epoch"), (int, float)):
            by_epoch.setdefault(record["epoch"], {}).update(record)
    return [by_epoch[e] for e in sorted(by_epoch)]


# (panel title, metrics.jsonl keys drawn in it): the panels of the training-curves figure.
TRAINING_PANELS = (
    ("loss", ("train_loss", "val_loss")),
    ("accuracy", ("train_acc", "val_acc", "ema_val_acc")),
    ("learning rate", ("lr",)),
    ("images/s", ("images_per_second",)),
)


def training_curves_figure(records: list[dict]) -> Figure:
    """The figure of `plot_training_curves`, unsaved: one panel per entry of TRAINING_PANELS."""
    records = merge_by_epoch(records)
    fig = Figure(figsize=(5.0 * len(TRAINING_PANELS), 4.2), layout="constrained")
    for index, (name, keys) in enumerate(TRAINING_PANELS, start=1):
        ax = fig.add_subplot(1, len(TRAINING_PANELS), index)
        plotted = False
        for key in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
                plotted = True
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return fig


def plot_training_curves(records: list[dict], path: str | os.PathLike) -> Path:
    """Draw loss, accuracy, learning-rate and throughput panels from the lines of metrics.jsonl.

    Each record has "epoch" and any of train_loss, train_acc, val_loss, val_acc, ema_val_acc, lr,
    images_per_second; missing keys are skipped, records without an epoch are ignored, and lines
    of the same epoch are merged, a later value winning (as after a resume). A panel with nothing
    to show says so.
    """
    return _save(training_curves_figure(records), path)


def image_grid_figure(images: np.ndarray, captions: Sequence[str], columns: int = 8) -> Figure:
    """uint8 images (k, 3, H, W) in a grid, each drawn pixel for pixel with its caption above it."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise DataError(f"the image grid needs uint8 images (k, 3, H, W), got {images.dtype} {images.shape}")
    if len(captions) != len(images):
        raise DataError(f"got {len(captions)} captions for {len(images)} images")
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows), layout="constrained")
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")   # no smoothing: the real pixels
        ax.set_title(caption, fontsize=7)
        ax.set_axis_off()
    return fig


def plot_image_grid(images: np.ndarray, captions: Sequence[str], path: str | os.PathLike,
                    columns: int = 8) -> Path:
    """Draw `image_grid_figure` into a PNG file."""
    return _save(image_grid_figure(images, captions, columns), path)
