"""Integer vectors (labels, ids) out of untrusted pickles, checked before numpy converts them.

`np.asarray` expands nested lists, and a pickle can share one list many times: a list holding
the same list twice, 24 levels deep, is about 350 bytes of pickle and 2**24 elements of array
(46 s and 556 MB before the shape could be checked). So a list is accepted only when it has the
expected length and every item is an integer, checked on the Python objects first; numpy arrays
are already sized by the file that held them. Values stay exact: int64 when they fit, uint64
for ids of 2**63 and more, anything wider is refused -- never wrapped.
"""

from __future__ import annotations

import numpy as np

INT64_MAX = int(np.iinfo(np.int64).max)
UINT64_MAX = int(np.iinfo(np.uint64).max)


class IntVectorError(ValueError):
    """Why a value is not the integer vector asked for.

    kind: "shape" (not a flat sequence of integers), "length" (`found` items) or "range"
    (integers outside 64 bits); `detail` is a short parenthesis for the message."""

    def __init__(self, kind: str, detail: str = "", found: int | None = None) -> None:
        super().__init__(kind)
        self.kind, self.detail, self.found = kind, detail, found


def int_vector(raw: object, length: int | None = None) -> np.ndarray:
    """A 1-D int64 (or, for values above int64, uint64) array from a numpy array, list or tuple.

    `length`, when given, is checked before any conversion: it is what the declared data needs
    (one label or id per image), so no more than that is ever built."""
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            raise IntVectorError("shape", f" (dtype {raw.dtype}, shape {raw.shape})")
        if length is not None and len(raw) != length:
            raise IntVectorError("length", found=len(raw))
        if raw.dtype == np.uint64 and len(raw) and int(raw.max()) > INT64_MAX:
            return raw.copy()
        return raw.astype(np.int64)
    if not isinstance(raw, (list, tuple)):
        raise IntVectorError("shape", f" (a {type(raw).__name__})")
    if length is not None and len(raw) != length:
        raise IntVectorError("length", found=len(raw))
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise IntVectorError("shape", f" (item {i} is a {type(item).__name__})")
    if not raw:
        return np.zeros(0, dtype=np.int64)
    low, high = int(min(raw)), int(max(raw))
    if low >= -INT64_MAX - 1 and high <= INT64_MAX:
        return np.array(raw, dtype=np.int64)
    if low >= 0 and high <= UINT64_MAX:
        return np.array([int(v) for v in raw], dtype=np.uint64)
    raise IntVectorError("range", f" ({low if low < -INT64_MAX - 1 else high} does not fit in 64 bits)")
