"""Classification metrics from predicted probabilities and true labels, in plain numpy.

Inputs may be numpy arrays or torch tensors (any device). "probs" is an (N, C) array of class
probabilities; "preds" is either (N,) predicted class indices or (N, C) scores, reduced by argmax.
Classes without predictions get precision 0, classes without samples recall 0 and an undefined
(NaN) AUC that is left out of the macro average -- the same conventions as torchmetrics, which the
tests use as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cifarkit.errors import DataError

_NLL_FLOOR = 1e-12  # a probability of exactly 0 for the true class would make the NLL infinite


# ---------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------

def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, kept free of a hard torch import here
        a = a.detach().float().cpu().numpy() if a.is_floating_point() else a.detach().cpu().numpy()
    return np.asarray(a)


def _labels(labels: Any, n: int | None = None, num_classes: int | None = None) -> np.ndarray:
    y = _to_numpy(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be a 1-D array of class indices, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.size == 0:
        raise DataError("there are no labels to evaluate")
    if n is not None and len(y) != n:
        raise DataError(f"got {n} predictions but {len(y)} labels")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return y


def _probs(probs: Any) -> np.ndarray:
    p = _to_numpy(probs).astype(np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise DataError(f"probabilities must be an (N, C) array with N >= 1 and C >= 2, got shape {p.shape}")
    return p


def _preds(probs_or_preds: Any) -> np.ndarray:
    a = _to_numpy(probs_or_preds)
    if a.ndim == 2:
        return a.argmax(axis=1).astype(np.int64)
    if a.ndim == 1:
        return a.astype(np.int64)
    raise DataError(f"predictions must be (N,) class indices or (N, C) scores, got shape {a.shape}")


def _check_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise DataError(f"got {len(names)} class names for {num_classes} classes")
    return names


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def accuracy(probs_or_preds: Any, labels: Any) -> float:
    """Fraction of samples whose predicted class (argmax of scores, or the given index) is right."""
    preds = _preds(probs_or_preds)
    y = _labels(labels, n=len(preds))
    return float(np.mean(preds == y))


def top_k_accuracy(probs: Any, labels: Any, k: int = 5) -> float:
    """Fraction of samples whose true class is among the k highest scores."""
    p = _probs(probs)
    y = _labels(labels, n=len(p), num_classes=p.shape[1])
    k = min(k, p.shape[1])
    top = np.argpartition(-p, k - 1, axis=1)[:, :k]
    return float(np.mean((top == y[:, None]).any(axis=1)))


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    p = _preds(preds)
    y = _labels(labels, n=len(p), num_classes=num_classes)
    if p.min() < 0 or p.max() >= num_classes:
        raise DataError(f"predictions must lie in 0..{num_classes - 1}, found {p.min()}..{p.max()}")
    counts = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class_report(preds: Any, labels: Any, class_names: Sequence[str]) -> dict:
    """Precision, recall, F1 and support per class, their macro average, and accuracy.

    Returns {"classes": {name: {precision, recall, f1, support}}, "macro_avg": {precision,
    recall, f1, support}, "accuracy": float}; support is the number of true samples.
    """
    names = list(class_names)
    cm = confusion_matrix(preds, labels, len(names))
    names = _check_names(names, cm.shape[0])
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = _safe_ratio(tp, predicted)
    recall = _safe_ratio(tp, support)
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    classes = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]),
               "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(names)
    }
    macro = {"precision": float(precision.mean()), "recall": float(recall.mean()),
             "f1": float(f1.mean()), "support": int(support.sum())}
    return {"classes": classes, "macro_avg": macro, "accuracy": float(tp.sum() / support.sum())}


def binary_roc(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve of one score against a boolean target: (fpr, tpr, thresholds).

    One point per distinct score (ties move both rates at once), starting at (0, 0) with
    threshold +inf. A rate whose class is absent is all zeros.
    """
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], positives[order].astype(np.float64)
    # Last index of each run of equal scores: the points where the threshold can sit.
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], dtype=np.int64)
    ends = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(t)[ends]
    fps = (ends + 1) - tps
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, s[ends]]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.zeros_like(fps)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.zeros_like(tps)
    return fpr, tpr, thresholds


def _trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def roc_curves(probs: Any, labels: Any, num_classes: int) -> dict:
    """One-vs-rest ROC curve and AUC per class, and their macro average.

    Returns {"fpr": [array per class], "tpr": [...], "thresholds": [...], "auc": [float per class],
    "macro_auc": float}. A class with no positive or no negative sample has AUC NaN and is left
    out of the macro average (NaN if no class has a defined AUC).
    """
    p = _probs(probs)
    if p.shape[1] != num_classes:
        raise DataError(f"probabilities have {p.shape[1]} columns but num_classes is {num_classes}")
    y = _labels(labels, n=len(p), num_classes=num_classes)
    result: dict[str, Any] = {"fpr": [], "tpr": [], "thresholds": [], "auc": []}
    for c in range(num_classes):
        positives = y == c
        fpr, tpr, thresholds = binary_roc(p[:, c], positives)
        defined = 0 < positives.sum() < len(y)
        auc = _trapezoid_area(fpr, tpr) if defined else math.nan
        for key, value in zip(("fpr", "tpr", "thresholds", "auc"), (fpr, tpr, thresholds, auc)):
            result[key].append(value)
    aucs = np.array(result["auc"])
    result["macro_auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan
    return result


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence (L1, equal-width bins over [0, 1]).

    Bins are [k/n, (k+1)/n); a confidence of exactly 1 joins the last bin. ECE is the
    sample-weighted mean of |accuracy - mean confidence| over the bins.
    """
    if n_bins < 1:
        raise DataError(f"n_bins must be >= 1, got {n_bins}")
    p = _probs(probs)
    y = _labels(labels, n=len(p), num_classes=p.shape[1])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    boundaries = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(boundaries, confidence, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    gap = np.abs(_safe_ratio(correct_sum, count) - _safe_ratio(conf_sum, count))
    return float(np.sum(gap * count) / len(p))


def negative_log_likelihood(probs: Any, labels: Any) -> float:
    """Mean -log p(true class); probabilities are floored at 1e-12 to keep it finite."""
    p = _probs(probs)
    y = _labels(labels, n=len(p), num_classes=p.shape[1])
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _NLL_FLOOR))))


def _finite_or_none(x: float) -> float | None:
    # JSON has no NaN; an undefined number is written as null.
    return float(x) if math.isfinite(x) else None


def evaluation_summary(probs: Any, labels: Any, class_names: Sequence[str]) -> dict:
    """Every evaluation number of one set of predictions, ready for json.dumps.

    Keys: num_samples, num_classes, accuracy, top5_accuracy (only with more than 5 classes), nll,
    ece, macro_auc, per_class_auc {name: auc}, report (see per_class_report), class_names,
    confusion_matrix (list of rows, row = true class). Undefined numbers are None.
    """
    p = _probs(probs)
    names = _check_names(class_names, p.shape[1])
    y = _labels(labels, n=len(p), num_classes=p.shape[1])
    preds = p.argmax(axis=1)
    roc = roc_curves(p, y, len(names))
    summary: dict[str, Any] = {
        "num_samples": int(len(y)),
        "num_classes": len(names),
        "accuracy": accuracy(preds, y),
    }
    if len(names) > 5:
        summary["top5_accuracy"] = top_k_accuracy(p, y, 5)
    summary.update({
        "nll": negative_log_likelihood(p, y),
        "ece": expected_calibration_error(p, y),
        "macro_auc": _finite_or_none(roc["macro_auc"]),
        "per_class_auc": {name: _finite_or_none(auc) for name, auc in zip(names, roc["auc"])},
        "report": per_class_report(preds, y, names),
        "class_names": names,
        "confusion_matrix": confusion_matrix(preds, y, len(names)).tolist(),
    })
    return summary
