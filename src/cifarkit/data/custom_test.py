"""The competition's unlabeled test pickle in, the submission CSV out.

The pickle is a dict with keys b'data' -- uint8 (N, 32, 32, 3), channels LAST -- and b'ids', an
integer array of length N (str keys are accepted too). `data` may also come as (N, 3072) rows of
R, G and B planes, the training batches' layout; rows that are clearly flattened (32, 32, 3)
images instead are refused with the reshape that fixes them. Ids keep their exact values (uint64
ids of 2**63 and more too). The CSV has one row per id, sorted by id, with a configurable header
(the scored one is "ID,Labels").
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cifarkit.data.integers import IntVectorError, int_vector
from cifarkit.data.safe_pickle import safe_load
from cifarkit.errors import DataError
from cifarkit.fsio import atomic_open, check_can_write

DEFAULT_HEADER = ("ID", "Labels")


def load_custom_test(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8 C-contiguous, ids (N,) int64) from the competition pickle."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = safe_load(f, what=str(path), encoding="bytes")
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a dict with 'data' and 'ids'")
    data, ids = _entry(obj, "data"), _entry(obj, "ids")
    missing = [name for name, value in (("data", data), ("ids", ids)) if value is None]
    if missing:
        raise DataError(f"{path} has no {' or '.join(repr(m) for m in missing)} entry "
                        "(expected keys b'data' and b'ids')")
    images = _check_images(data, path)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), _check_ids(ids, len(images), path)


PIXELS = 3 * 32 * 32
# Rows of R, G, B planes: the byte 32 on is the pixel below (same channel), 96 on is three rows
# down, so neighbours 32 apart differ less than those 96 apart. Flattened (32, 32, 3) images are
# the other way round (96 apart: the pixel below). Measured on the CIFAR-10 test set, the ratio
# d96 / d32 is 1.21-2.81 per image for planes and 0.02-0.93 for interleaved rows; noise gives 1.
_INTERLEAVED_BELOW = 0.8


def _looks_interleaved(rows: np.ndarray) -> bool:
    sample = rows[:: max(1, len(rows) // 1000)].astype(np.int16)     # at most ~1000 images
    near = np.abs(sample[:, 32:] - sample[:, :-32]).mean()
    far = np.abs(sample[:, 96:] - sample[:, :-96]).mean()
    return bool(near > 0 and far / near < _INTERLEAVED_BELOW)


def _entry(obj: dict, key: str) -> object | None:
    for candidate in (key.encode(), key):
        if candidate in obj:
            return obj[candidate]
    return None


def _check_images(data: object, path: Path) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: 'data' is a {type(data).__name__}, not a numpy array")
    if data.ndim == 2 and data.shape[1] == PIXELS and data.dtype == np.uint8:
        if _looks_interleaved(data):
            raise DataError(f"{path}: 'data' has shape {data.shape} and its rows look like flattened "
                            "(32, 32, 3) images, not the R, G, B planes of the training batches; save "
                            "it as data.reshape(-1, 32, 32, 3) (channels last) instead")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)    # planes -> channels last
    if data.ndim != 4:
        raise DataError(f"{path}: 'data' has shape {data.shape}, not 4-D (N, 32, 32, 3) or (N, 3072)")
    if data.shape[1:] == (3, 32, 32):
        raise DataError(f"{path}: 'data' has shape {data.shape}, which is channels-first; the "
                        "competition format is channels-last (N, 32, 32, 3)")
    if data.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: 'data' has shape {data.shape}, not (N, 32, 32, 3)")
    if data.dtype != np.uint8:
        kind = "float " if data.dtype.kind == "f" else ""
        raise DataError(f"{path}: 'data' has {kind}dtype {data.dtype}, not uint8 pixels in 0..255")
    return data


def _check_ids(ids: object, n: int, path: Path) -> np.ndarray:
    """n distinct integer ids, exact (int64, or uint64 when some are 2**63 or more)."""
    try:
        array = int_vector(ids, length=n)
    except IntVectorError as e:
        if e.kind == "length":
            raise DataError(f"{path}: 'ids' has {e.found} entries for {n} images") from None
        if e.kind == "range":
            raise DataError(f"{path}: 'ids' holds integers that do not fit in 64 bits{e.detail}") from None
        raise DataError(f"{path}: 'ids' is not a 1-D array of integers{e.detail}") from None
    unique, counts = np.unique(array, return_counts=True)
    if len(unique) != len(array):
        raise DataError(f"{path}: 'ids' repeats id {unique[counts > 1][0]}, so rows cannot be told apart")
    return array


def write_submission(path: str | os.PathLike, ids: Sequence[int] | np.ndarray,
                     labels: Sequence[int] | np.ndarray, header: Sequence[str] = DEFAULT_HEADER,
                     *, num_classes: int = 10) -> Path:
    """Write `id,label` rows sorted by id, atomically (the file is complete or absent/unchanged)."""
    path = Path(path)
    ids_array = _int_vector(ids, "ids")
    labels_array = _int_vector(labels, "labels")
    if len(ids_array) != len(labels_array):
        raise DataError(f"cannot write {path}: {len(ids_array)} ids but {len(labels_array)} labels")
    if len(np.unique(ids_array)) != len(ids_array):
        raise DataError(f"cannot write {path}: the ids are not unique")
    if len(labels_array) and (labels_array.min() < 0 or labels_array.max() >= num_classes):
        raise DataError(f"cannot write {path}: labels must be class indices in 0..{num_classes - 1}")
    if len(header) != 2:
        raise DataError(f"cannot write {path}: the header needs exactly two column names, got {list(header)}")
    check_can_write(path)
    order = np.argsort(ids_array, kind="stable")
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(ids_array[order].tolist(), labels_array[order].tolist()))
    return path


def _int_vector(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.size == 0:
        return np.zeros(0, dtype=np.int64)                  # np.array([]) is float64: still no rows
    try:
        return int_vector(list(values) if not isinstance(values, (np.ndarray, list, tuple)) else values)
    except IntVectorError as e:
        raise DataError(f"submission {name} must be a 1-D sequence of integers{e.detail}") from None


def read_submission(path: str | os.PathLike) -> tuple[tuple[str, str], np.ndarray, np.ndarray]:
    """(header, ids, labels) of a submission CSV."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as a CSV file ({exc})") from None
    if not rows or len(rows[0]) != 2:
        raise DataError(f"{path} has no two-column header line")
    try:
        pairs = [(int(a), int(b)) for a, b in rows[1:]]
        ids, labels = int_vector([a for a, _ in pairs]), int_vector([b for _, b in pairs])
    except (ValueError, TypeError):       # a row of other than two integers, or wider than 64 bits
        raise DataError(f"{path} has a row that is not two integers (of at most 64 bits)") from None
    return (rows[0][0], rows[0][1]), ids, labels
