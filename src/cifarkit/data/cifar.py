"""CIFAR-10/100 from the official "python version": find, download, read, check, decode.

The batches are read straight out of the .tar.gz (exact member names only, regular files only,
each capped at what its images need: data/archive.py) or out of an extracted folder, unpickled
with the restricted unpickler, checked for shape, dtype and label range, and -- for CIFAR-10 --
verified by the SHA-256 of the decoded pixels and labels, which holds for any faithful copy
whatever its container bytes. (Longer than most modules: finding a copy, reading it and checking
it field by field are one path that every command goes through, kept together; the download and
the archive reader live in download.py and archive.py.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cifarkit.data.archive import TAR_SLACK_BYTES, extract_archive, read_members
from cifarkit.data.download import download_archive
from cifarkit.data.integers import IntVectorError, int_vector
from cifarkit.data.safe_pickle import safe_loads
from cifarkit.errors import ConfigError, DataError

Log = Callable[[str], object]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

# SHA-256 of the decoded arrays as C-contiguous bytes: images (N, 3072) uint8 in batch order,
# labels as uint8. Valid for the official release and for any lossless copy of it.
CIFAR10_SHA256 = {
    "train images": "9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
    "train labels": "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253",
    "test images": "177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
    "test labels": "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5",
}
CIFAR10_COUNTS = {"train": 50000, "test": 10000}

MAX_MEMBER_BYTES = 320 * 2**20   # the largest official member (cifar-100 train) is ~155 MB; twice that re-pickled
MAX_META_BYTES = 2**20           # the official meta files are 158 (CIFAR-10) and ~1,500 bytes
IMAGE_SIZE = 32
PIXELS = 3 * IMAGE_SIZE * IMAGE_SIZE


@dataclass(frozen=True)
class _Layout:
    title: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    url: str
    md5: str
    images_per_file: int          # images in each train/test file of the official release (CIFAR-100's train: 5x)

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)

    def max_bytes(self, name: str) -> int:
        """The most bytes file `name` may hold: what its images need, with room for labels,
        file names and pickle framing. Reading stops here, whatever the file claims. Twice the
        pixels, because Python 3 writes bytes at pickle protocols 0-2 as latin-1 text in UTF-8,
        where every byte of 128 or more takes two (a faithful re-pickled copy of the data)."""
        if name == self.meta_file:
            return min(MAX_META_BYTES, MAX_MEMBER_BYTES)
        images = self.images_per_file * (5 if self.train_files == ("train",) and name == "train" else 1)
        return min(images * PIXELS * 2 + 4 * 2**20, MAX_MEMBER_BYTES)

    def max_total_bytes(self) -> int:
        return sum(self.max_bytes(name) for name in self.files)


_LAYOUTS = {
    "cifar10": _Layout("CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                       tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                       "batches.meta", CIFAR10_URL, CIFAR10_MD5, 10000),
    "cifar100": _Layout("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python",
                        ("train",), ("test",), "meta", CIFAR100_URL, CIFAR100_MD5, 10000),
}
# (dataset, label_mode) -> (label key, class-name key in the meta file, number of classes)
_LABEL_KEYS = {
    ("cifar10", "fine"): ("labels", "label_names", 10),
    ("cifar100", "fine"): ("fine_labels", "fine_label_names", 100),
    ("cifar100", "coarse"): ("coarse_labels", "coarse_label_names", 20),
}


@dataclass
class CifarArrays:
    train_images: np.ndarray  # (N, 3, 32, 32) uint8, C-contiguous, original order
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    source: str               # where it was read from (path), for the run record

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_cifar(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None, *,
               download: bool = True, verify: bool = True, label_mode: str = "fine",
               log: Log = print) -> CifarArrays:
    """Load CIFAR-10 or CIFAR-100 as uint8 NCHW arrays in the original order.

    Where it looks: `data_dir` if given, else the environment variable CIFARKIT_DATA, else
    "./data". That location may be
      1. the archive file itself (cifar-10-python.tar.gz / cifar-100-python.tar.gz, or any
         file of that format),
      2. a directory holding the extracted folder (cifar-10-batches-py / cifar-100-python),
      3. the extracted folder itself (a directory holding batches.meta / meta), or
      4. a directory holding the archive.
    An extracted folder wins over an archive next to it. Archives are read in place, never
    extracted, so a read-only directory works.

    If nothing is found and `download` is True, the official archive is fetched over HTTPS into
    that directory (MD5-checked, renamed into place only when complete); otherwise DataError.
    With `verify`, CIFAR-10 is checked against the SHA-256 of its official pixels and labels
    (no such table exists for CIFAR-100). `label_mode` picks CIFAR-100's "fine" (100) or
    "coarse" (20) labels.
    """
    layout = _layout(dataset)
    label_key, names_key, num_classes = _label_keys(dataset, label_mode)
    root = Path(data_dir if data_dir is not None else os.environ.get("CIFARKIT_DATA") or "data")

    kind, path, looked = _find_source(layout, root)
    if kind is None:
        if not download:
            places = ", ".join(str(p) for p in looked)
            raise DataError(f"{layout.title} not found (looked for {places}); pass --data-dir "
                            "pointing at the archive or its folder, or pass --set data.download=true")
        path = _download_target(layout, root)
        log(f"{layout.title} not found under {root}; downloading {layout.url} to {path}")
        download_archive(layout.url, path, layout.md5, log=log)
        kind = "archive"

    blobs = _read_archive(path, layout) if kind == "archive" else _read_folder(path, layout)
    source = str(path)
    what = {name: f"{source}: {name}" for name in layout.files}

    classes = _class_names(safe_loads(blobs.pop(layout.meta_file), what=what[layout.meta_file]),
                           what[layout.meta_file], names_key, num_classes)
    train_images, train_labels = _decode_split(blobs, layout.train_files, what, label_key, num_classes)
    test_images, test_labels = _decode_split(blobs, layout.test_files, what, label_key, num_classes)
    arrays = CifarArrays(train_images, train_labels, test_images, test_labels, classes, source)

    verified = ""
    if verify and dataset == "cifar10":
        verify_cifar10(arrays)
        verified = ", content verified"
    log(f"{layout.title}: {len(train_labels)} training and {len(test_labels)} test images, "
        f"{num_classes} classes, from {source}{verified}")
    return arrays


def fetch_cifar(dataset: str = "cifar10", data_dir: str | os.PathLike | None = None, *, extract: bool = False,
                verify: bool = True, log: Log = print) -> Path:
    """`cifarkit download`: make sure a checked local copy exists; optionally unpack the archive.

    Downloads when nothing is there, reads and verifies the copy (so a bad one fails now, not at
    training time), and with `extract` unpacks an archive next to itself through `extract_archive`
    (no path traversal, no links). Returns the path later commands can be given as --data-dir.
    """
    arrays = load_cifar(dataset, data_dir, download=True, verify=verify, log=log)
    source = Path(arrays.source)
    if not (extract and source.is_file()):
        return source
    layout = _layout(dataset)
    target = source.parent
    if (target / layout.folder).is_dir():
        log(f"{target / layout.folder} already exists; not extracting again")
    else:
        extract_archive(source, target, max_bytes=layout.max_total_bytes() + TAR_SLACK_BYTES)
        log(f"extracted {source} into {target / layout.folder}")
    return target / layout.folder


def verify_cifar10(arrays: CifarArrays) -> None:
    """Raise DataError unless the arrays are exactly the official CIFAR-10 pixels and labels."""
    for split in ("train", "test"):
        found = len(getattr(arrays, f"{split}_labels"))
        if found != CIFAR10_COUNTS[split]:
            raise DataError(f"{arrays.source}: {split} split has {found} images, not the "
                            f"{CIFAR10_COUNTS[split]} of CIFAR-10 (pass "
                            "--set data.verify=false for a custom copy)")
    arrays_by_name = {
        "train images": arrays.train_images, "train labels": arrays.train_labels.astype(np.uint8),
        "test images": arrays.test_images, "test labels": arrays.test_labels.astype(np.uint8),
    }
    for name, array in arrays_by_name.items():
        digest = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
        if digest != CIFAR10_SHA256[name]:
            raise DataError(f"{arrays.source}: {name} do not match official CIFAR-10 (sha256 "
                            f"{digest[:16]}... instead of {CIFAR10_SHA256[name][:16]}...); the copy "
                            "is corrupt or modified (pass --set data.verify=false to use it anyway)")


# --- finding the data ---------------------------------------------------------------------

def _layout(dataset: str) -> _Layout:
    if dataset not in _LAYOUTS:
        raise ConfigError(f"unknown dataset '{dataset}' (expected one of: {', '.join(_LAYOUTS)})")
    return _LAYOUTS[dataset]


def _label_keys(dataset: str, label_mode: str) -> tuple[str, str, int]:
    if (dataset, label_mode) not in _LABEL_KEYS:
        modes = [mode for (name, mode) in _LABEL_KEYS if name == dataset]
        raise ConfigError(f"label_mode '{label_mode}' is not available for {dataset} "
                          f"(expected one of: {', '.join(modes)})")
    return _LABEL_KEYS[(dataset, label_mode)]


def _find_source(layout: _Layout, root: Path) -> tuple[str | None, Path, list[Path]]:
    """(kind, path, places looked): kind is "archive", "folder" or None when nothing is found."""
    if root.is_file():
        return "archive", root, [root]
    folder, archive = root / layout.folder, root / layout.archive
    looked = [folder, root / layout.meta_file, archive]
    if folder.is_dir():
        return "folder", folder, looked
    if (root / layout.meta_file).is_file():
        return "folder", root, looked
    if archive.is_file():
        return "archive", archive, looked
    return None, root, looked


def _download_target(layout: _Layout, root: Path) -> Path:
    # A path that names the archive itself (and does not exist yet) is where the download goes.
    if root.name.endswith((".tar.gz", ".tgz")) and not root.exists():
        return root
    return root / layout.archive


# --- reading the raw batch files -----------------------------------------------------------

def _read_archive(path: Path, layout: _Layout) -> dict[str, bytes]:
    """The expected members' bytes, each within what its images need (see `read_members`)."""
    wanted = {f"{layout.folder}/{name}": name for name in layout.files}
    found = read_members(path, wanted, layout.max_bytes, layout.max_total_bytes())
    missing = [f"{layout.folder}/{name}" for name in layout.files if name not in found]
    if missing:
        raise DataError(f"{path} lacks the {layout.title} member(s) {', '.join(missing)}")
    return found


def _read_folder(folder: Path, layout: _Layout) -> dict[str, bytes]:
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks the {layout.title} file(s) {', '.join(missing)}")
    blobs = {}
    for name in layout.files:
        path = folder / name
        cap = layout.max_bytes(name)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = f.read(size + 1) if size <= cap else b""   # never more than the cap
        except OSError as exc:
            raise DataError(f"{path} cannot be read ({exc.strerror or exc})") from None
        if size > cap:
            raise DataError(f"{path} is larger than any CIFAR file ({cap} bytes at most for {name})")
        if len(data) != size:
            raise DataError(f"{path} changed while it was read; read it again when nothing writes to it")
        blobs[name] = data
    return blobs


# --- decoding and checking -----------------------------------------------------------------

def _get(batch: dict, key: str, what: str) -> object:
    # Python 2 pickles give bytes keys under encoding="bytes"; re-pickled copies may use str.
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{what} has no '{key}' entry (found keys: {_keys(batch)})")


def _keys(batch: dict) -> str:
    return ", ".join(sorted(k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in batch)) or "none"


def _decode_batch(batch: object, what: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict):
        raise DataError(f"{what} holds a {type(batch).__name__}, not the dict of a CIFAR batch")
    data = _get(batch, "data", what)
    if not isinstance(data, np.ndarray):
        raise DataError(f"{what}: 'data' is a {type(data).__name__}, not a numpy array")
    if data.dtype != np.uint8:
        raise DataError(f"{what}: 'data' has dtype {data.dtype}, not uint8")
    if data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{what}: 'data' has shape {data.shape}, not (N, {PIXELS})")
    labels = _as_labels(_get(batch, label_key, what), what, label_key, num_classes, len(data))
    return data, labels


def _as_labels(raw: object, what: str, label_key: str, num_classes: int, count: int) -> np.ndarray:
    """`count` labels in 0..num_classes-1; the structure is checked before numpy expands it."""
    try:
        labels = int_vector(raw, length=count)
    except IntVectorError as e:
        if e.kind == "length":
            raise DataError(f"{what}: {e.found} '{label_key}' for {count} images") from None
        raise DataError(f"{what}: '{label_key}' is not a flat list of integers{e.detail}") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(f"{what}: '{label_key}' holds label {bad}, outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _decode_split(blobs: dict[str, bytes], files: tuple[str, ...], what: dict[str, str],
                  label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        batch = safe_loads(blobs.pop(name), what=what[name])   # pop: free each blob once decoded
        data, batch_labels = _decode_batch(batch, what[name], label_key, num_classes)
        images.append(data)
        labels.append(batch_labels)
    # (N, 3072) rows hold the R, G, B planes row by row, so a reshape gives NCHW without copying.
    all_images = np.concatenate(images).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return np.ascontiguousarray(all_images), np.concatenate(labels)


def _class_names(meta: object, what: str, names_key: str, num_classes: int) -> list[str]:
    if not isinstance(meta, dict):
        raise DataError(f"{what} holds a {type(meta).__name__}, not the dict of a CIFAR meta file")
    names = _get(meta, names_key, what)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{what}: '{names_key}' is not a list of strings")
    if len(names) != num_classes:
        raise DataError(f"{what}: '{names_key}' lists {len(names)} classes, not {num_classes}")
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]
