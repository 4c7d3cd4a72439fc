"""The competition's unlabeled test pickle in, the submission CSV out.

The pickle is a dict with keys b'data' -- uint8 (N, 32, 32, 3), channels LAST -- and b'ids', an
integer array of length N (str keys are accepted too). The CSV has one row per id, sorted by id,
with a configurable header (the scored one is "ID,Labels").
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cifarkit.data.safe_pickle import safe_load
from cifarkit.errors import DataError
from cifarkit.fsio import atomic_open

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


def _entry(obj: dict, key: str) -> object | None:
    for candidate in (key.encode(), key):
        if candidate in obj:
            return obj[candidate]
    return None


def _check_images(data: object, path: Path) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: 'data' is a {type(data).__name__}, not a numpy array")
    if data.ndim != 4:
        raise DataError(f"{path}: 'data' has shape {data.shape}, not 4-D (N, 32, 32, 3)")
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
    try:
        array = np.asarray(ids)
    except (ValueError, TypeError):
        array = np.asarray([None])
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise DataError(f"{path}: 'ids' is not a 1-D array of integers (dtype {array.dtype}, "
                        f"shape {array.shape})")
    if len(array) != n:
        raise DataError(f"{path}: 'ids' has {len(array)} entries for {n} images")
    unique, counts = np.unique(array, return_counts=True)
    if len(unique) != len(array):
        raise DataError(f"{path}: 'ids' repeats id {unique[counts > 1][0]}, so rows cannot be told apart")
    return array.astype(np.int64)


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
    check_writable_target(path)
    order = np.argsort(ids_array, kind="stable")
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(ids_array[order].tolist(), labels_array[order].tolist()))
    return path


def check_writable_target(path: Path) -> None:
    """DataError when `path` is a folder or sits under a file or a read-only folder."""
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a directory; give a file name such as {path / 'submission.csv'}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent   # the first folder that exists; atomic_open creates the rest
    if ancestor.exists() and not ancestor.is_dir():
        raise DataError(f"cannot write {path}: {ancestor} is a file, not a directory")
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(f"cannot write {path}: {ancestor} is not writable")


def _int_vector(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise DataError(f"submission {name} must be a 1-D sequence of integers, got dtype "
                        f"{array.dtype} and shape {array.shape}")
    return array.astype(np.int64)


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
        body = np.array([[int(a), int(b)] for a, b in rows[1:]], dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise DataError(f"{path} has a row that is not two integers") from None
    return (rows[0][0], rows[0][1]), body[:, 0], body[:, 1]
