"""Small synthetic datasets in the exact on-disk formats cifarkit reads.

`make_fake_cifar` writes CIFAR-10/100 "python version" batches (dicts with bytes keys, uint8
(n, 3072) data, label lists, a meta file) that a tiny model can learn: every class has its own
blocky colour pattern, and each image is that pattern plus noise and a random brightness shift.
`make_custom_test_pickle` writes the competition's unlabeled test pickle, and broken variants.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_LAYOUT = {
    # dataset: (folder, archive name, meta file, number of fine classes)
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "batches.meta", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", "meta", 100),
}


def fake_images(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """uint8 (n, 3, 32, 32): class prototype (4x4 colour blocks upsampled to 32x32) + noise."""
    prototypes = np.random.default_rng(1234).integers(30, 226, size=(num_classes, 3, 4, 4))
    prototypes = prototypes.repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 25, size=(len(labels), 3, 32, 32)).astype(np.float32)
    shift = rng.normal(0, 10, size=(len(labels), 1, 1, 1)).astype(np.float32)
    return np.clip(prototypes[labels] + noise + shift, 0, 255).astype(np.uint8)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _batch(images: np.ndarray, labels: dict[bytes, list[int]], label: str) -> dict[bytes, object]:
    n = len(images)
    return {
        b"batch_label": label.encode(),
        **labels,
        b"data": np.ascontiguousarray(images.reshape(n, 3072)),
        b"filenames": [f"fake_{i:05d}.png".encode() for i in range(n)],
    }


def make_fake_cifar(root: Path, dataset: str = "cifar10", n_train: int = 500, n_test: int = 100,
                    *, archive: bool = False, seed: int = 0, protocol: int = 2) -> Path:
    """Write a CIFAR-format dataset under `root`; return `root`, the path to pass as data_dir.

    archive=False: root/<cifar-10-batches-py | cifar-100-python>/... ; archive=True: only
    root/<cifar-10-python.tar.gz | cifar-100-python.tar.gz>. Pickles are protocol 2 with bytes
    keys by default, so `pickle.load(f, encoding="bytes")` gives what it gives on the official files.
    CIFAR-100's coarse label of fine class k is k // 5.
    """
    root = Path(root)
    folder, archive_name, meta_name, num_classes = _LAYOUT[dataset]
    rng = np.random.default_rng(seed)
    train_labels = _balanced_labels(n_train, num_classes, rng)
    test_labels = _balanced_labels(n_test, num_classes, rng)
    train_images = fake_images(train_labels, num_classes, seed + 1)
    test_images = fake_images(test_labels, num_classes, seed + 2)

    files: dict[str, dict] = {}
    if dataset == "cifar10":
        chunks = np.array_split(np.arange(n_train), 5)
        for i, rows in enumerate(chunks, start=1):
            files[f"data_batch_{i}"] = _batch(train_images[rows], {b"labels": train_labels[rows].tolist()},
                                              f"training batch {i} of 5")
        files["test_batch"] = _batch(test_images, {b"labels": test_labels.tolist()}, "testing batch 1 of 1")
        files[meta_name] = {b"num_cases_per_batch": len(chunks[0]),
                            b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    else:
        def labels_of(fine: np.ndarray) -> dict[bytes, list[int]]:
            return {b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
        files["train"] = _batch(train_images, labels_of(train_labels), "training batch 1 of 1")
        files["test"] = _batch(test_images, labels_of(test_labels), "testing batch 1 of 1")
        files[meta_name] = {b"fine_label_names": [f"fine_{k:02d}".encode() for k in range(100)],
                            b"coarse_label_names": [f"coarse_{k:02d}".encode() for k in range(20)]}

    blobs = {name: pickle.dumps(obj, protocol=protocol) for name, obj in files.items()}
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        write_tar(root / archive_name, {f"{folder}/{name}": data for name, data in blobs.items()},
                  directories=[folder])
    else:
        (root / folder).mkdir(exist_ok=True)
        for name, data in blobs.items():
            (root / folder / name).write_bytes(data)
    return root


def write_tar(path: Path, members: dict[str, bytes], *, directories: list[str] = (),
              symlinks: dict[str, str] | None = None) -> Path:
    """A .tar.gz with the given directories, regular files and symlinks (name -> target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def make_custom_test_pickle(path: Path, n: int = 50, *, layout: str = "nhwc", dtype=np.uint8,
                            ids=None, str_keys: bool = False, seed: int = 0,
                            protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """Write the competition's test pickle: {b'data': (n, 32, 32, 3) uint8, b'ids': arange(n)}.

    Broken variants for tests: layout="nchw" (channels first), dtype=np.float32 (pixels / 255),
    ids= anything (wrong length, duplicates, floats), str_keys=True ('data'/'ids' keys).
    The images are class-like patterns (see `fake_images`) so predictions on them are meaningful.
    """
    labels = np.arange(n) % 10
    images = fake_images(labels, 10, seed).transpose(0, 2, 3, 1)        # NHWC, as the competition file
    if layout == "nchw":
        images = images.transpose(0, 3, 1, 2)
    images = np.ascontiguousarray(images)
    if np.dtype(dtype).kind == "f":
        images = images.astype(dtype) / 255
    else:
        images = images.astype(dtype)
    ids_array = np.arange(n, dtype=np.int64) if ids is None else ids
    keys = ("data", "ids") if str_keys else (b"data", b"ids")
    Path(path).write_bytes(pickle.dumps({keys[0]: images, keys[1]: ids_array}, protocol=protocol))
    return Path(path)
