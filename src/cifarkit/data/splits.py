"""A held-out validation split, stratified by class and fixed by its own seed.

Model selection, early stopping and tuning use this split; the test set is read once, at the end.
"""

from __future__ import annotations

import numpy as np

from cifarkit.errors import DataError


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): sorted int64, disjoint, together covering every index.

    `val_size` is shared among the classes in proportion to their size (largest remainder), so on
    a balanced set the per-class validation counts differ by at most one (CIFAR: 5000 -> 500 per
    class). Which classes get a remainder, and which examples go to validation, depend only on
    `seed` (numpy's PCG64). val_size=0 gives (all indices, empty).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"labels for a split must be a 1-D integer array, got shape {labels.shape} "
                        f"and dtype {labels.dtype}")
    n = len(labels)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)):
        raise DataError(f"val_size must be an integer, got {val_size!r}")
    if val_size < 0 or (val_size >= n and val_size > 0):
        raise DataError(f"val_size must be in [0, {n}) for {n} examples, got {val_size}")
    if val_size == 0:
        return np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)

    rng = np.random.Generator(np.random.PCG64(seed))
    classes, class_of = np.unique(labels, return_inverse=True)
    counts = np.bincount(class_of, minlength=len(classes))
    quotas = _largest_remainder(counts, val_size, rng)

    val_parts = []
    for c, quota in enumerate(quotas):
        members = np.flatnonzero(class_of == c)
        val_parts.append(rng.choice(members, size=int(quota), replace=False))
    val_idx = np.sort(np.concatenate(val_parts)).astype(np.int64)
    in_val = np.zeros(n, dtype=bool)
    in_val[val_idx] = True
    train_idx = np.flatnonzero(~in_val).astype(np.int64)
    return train_idx, val_idx


def _largest_remainder(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer shares of `total` proportional to `counts`; ties for the leftovers broken by `rng`."""
    scaled = counts.astype(np.int64) * total            # integer arithmetic: no rounding surprises
    shares, remainders = scaled // counts.sum(), scaled % counts.sum()
    leftover = total - int(shares.sum())
    if leftover:
        order = rng.permutation(len(counts))                 # random tie-breaking ...
        by_remainder = order[np.argsort(-remainders[order], kind="stable")]  # ... then largest first
        shares[by_remainder[:leftover]] += 1
    # share < count because total < counts.sum(), so floor + 1 never exceeds a class's size.
    return np.minimum(shares, counts)
