"""load_cifar on synthetic copies: every source form, every check, download and extraction."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cifarkit.data import archive, cifar
from cifarkit.data.cifar import (CifarArrays, download_archive, extract_archive, load_cifar,
                                 verify_cifar10)
from cifarkit.errors import ConfigError, DataError
from fakes import CIFAR10_NAMES, make_fake_cifar, write_tar

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"


def quiet(_msg: str) -> None:
    pass


def load(path, **kwargs) -> CifarArrays:
    kwargs.setdefault("verify", False)
    kwargs.setdefault("download", False)
    return load_cifar(kwargs.pop("dataset", "cifar10"), path, log=quiet, **kwargs)


def read_raw(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The trusted way (plain pickle on our own files), for comparison."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"])
        labels.append(batch.get(b"labels", batch.get(b"fine_labels")))
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels)


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("c10"), n_train=250, n_test=50)


@pytest.fixture(scope="module")
def fake_archive_dir(tmp_path_factory) -> Path:
    return make_fake_cifar(tmp_path_factory.mktemp("c10a"), n_train=250, n_test=50, archive=True)


def test_folder_loads_in_original_order(fake_dir):
    arrays = load(fake_dir)
    images, labels = read_raw(fake_dir / FOLDER, [f"data_batch_{i}" for i in range(1, 6)])
    assert arrays.train_images.shape == (250, 3, 32, 32) and arrays.test_images.shape == (50, 3, 32, 32)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_images.flags.c_contiguous
    assert arrays.test_images.flags.c_contiguous
    assert arrays.train_labels.dtype == np.int64 and arrays.test_labels.dtype == np.int64
    assert np.array_equal(arrays.train_images, images) and np.array_equal(arrays.train_labels, labels)
    assert arrays.classes == CIFAR10_NAMES and arrays.num_classes == 10
    assert arrays.source == str(fake_dir / FOLDER)


def test_every_source_form_gives_the_same_arrays(fake_dir, fake_archive_dir, monkeypatch):
    reference = load(fake_dir)
    forms = {
        "dir holding the folder": fake_dir,
        "the folder itself": fake_dir / FOLDER,
        "dir holding the archive": fake_archive_dir,
        "the archive itself": fake_archive_dir / ARCHIVE,
    }
    for form, path in forms.items():
        arrays = load(path)
        assert np.array_equal(arrays.train_images, reference.train_images), form
        assert np.array_equal(arrays.test_labels, reference.test_labels), form
        assert arrays.classes == reference.classes, form
    assert load(fake_archive_dir).source == str(fake_archive_dir / ARCHIVE)

    monkeypatch.setenv("CIFARKIT_DATA", str(fake_archive_dir))
    assert np.array_equal(load(None).train_labels, reference.train_labels)
    monkeypatch.delenv("CIFARKIT_DATA")
    monkeypatch.chdir(fake_dir.parent)
    (fake_dir.parent / "data").symlink_to(fake_dir)       # the default: ./data
    assert np.array_equal(load(None).train_labels, reference.train_labels)


def test_archive_is_read_without_extracting(fake_archive_dir):
    before = sorted(os.listdir(fake_archive_dir))
    load(fake_archive_dir)
    assert sorted(os.listdir(fake_archive_dir)) == before == [ARCHIVE]


def test_extracted_folder_wins_over_archive(tmp_path):
    make_fake_cifar(tmp_path, n_train=50, n_test=10, archive=True, seed=1)
    make_fake_cifar(tmp_path, n_train=100, n_test=10, seed=2)
    assert len(load(tmp_path).train_labels) == 100


def test_log_line_names_source(fake_dir):
    lines = []
    load_cifar("cifar10", fake_dir, download=False, verify=False, log=lines.append)
    assert len(lines) == 1 and "250 training and 50 test images" in lines[0] and str(fake_dir) in lines[0]


def test_nothing_found_without_download_lists_places(tmp_path):
    with pytest.raises(DataError) as info:
        load(tmp_path / "nowhere")
    message = str(info.value)
    assert "CIFAR-10 not found" in message and "nowhere/cifar-10-batches-py" in message
    assert "nowhere/cifar-10-python.tar.gz" in message and "--data-dir" in message


def test_bad_dataset_and_label_mode():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'"):
        load_cifar("mnist", log=quiet)
    with pytest.raises(ConfigError, match="label_mode 'coarse' is not available for cifar10"):
        load_cifar("cifar10", label_mode="coarse", log=quiet)


# --- CIFAR-100 on synthetic data of the same layout ----------------------------------------------

@pytest.mark.parametrize("archive", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, archive):
    root = make_fake_cifar(tmp_path, "cifar100", n_train=300, n_test=100, archive=archive)
    fine = load(root, dataset="cifar100")
    coarse = load(root, dataset="cifar100", label_mode="coarse")
    assert fine.train_images.shape == (300, 3, 32, 32) and fine.num_classes == 100
    assert coarse.num_classes == 20 and coarse.classes[3] == "coarse_03" and fine.classes[7] == "fine_07"
    assert np.array_equal(coarse.train_labels, fine.train_labels // 5)
    assert np.array_equal(fine.train_images, coarse.train_images)
    assert sorted(set(fine.train_labels.tolist())) == list(range(100))
    if not archive:
        images, labels = read_raw(root / "cifar-100-python", ["train"])
        assert np.array_equal(fine.train_images, images) and np.array_equal(fine.train_labels, labels)


# --- content verification ------------------------------------------------------------------------

def test_verify_refuses_a_copy_of_the_wrong_size(fake_dir):
    with pytest.raises(DataError, match="train split has 250 images, not the 50000 of CIFAR-10"):
        load(fake_dir, verify=True)


def test_verify_names_the_mismatching_array(fake_dir, monkeypatch):
    arrays = load(fake_dir)
    sha = {
        "train images": hashlib.sha256(arrays.train_images.tobytes()).hexdigest(),
        "train labels": hashlib.sha256(arrays.train_labels.astype(np.uint8).tobytes()).hexdigest(),
        "test images": hashlib.sha256(arrays.test_images.tobytes()).hexdigest(),
        "test labels": hashlib.sha256(arrays.test_labels.astype(np.uint8).tobytes()).hexdigest(),
    }
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", sha)
    monkeypatch.setattr(cifar, "CIFAR10_COUNTS", {"train": 250, "test": 50})
    verify_cifar10(arrays)                                   # the table matches: passes
    lines = []
    load_cifar("cifar10", fake_dir, download=False, verify=True, log=lines.append)
    assert "content verified" in lines[0]
    for field, name in [("test_labels", "test labels"), ("train_images", "train images")]:
        changed = dataclasses.replace(arrays, **{field: getattr(arrays, field).copy()})
        getattr(changed, field).reshape(-1)[0] ^= 1
        with pytest.raises(DataError, match=f"{name} do not match official CIFAR-10"):
            verify_cifar10(changed)


# --- malformed batches ---------------------------------------------------------------------------

def _write_batch(folder: Path, name: str, obj: object) -> None:
    (folder / name).write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture
def editable(tmp_path) -> Path:
    make_fake_cifar(tmp_path, n_train=50, n_test=10)
    return tmp_path / FOLDER


def _batch(data=..., labels=...):
    """A 10-image batch; pass None to drop an entry."""
    batch = {b"data": np.zeros((10, 3072), np.uint8) if data is ... else data,
             b"labels": [0] * 10 if labels is ... else labels, b"batch_label": b"x"}
    return {k: v for k, v in batch.items() if v is not None}


@pytest.mark.parametrize("batch, message", [
    (_batch(labels=None), "data_batch_2 has no 'labels' entry"),
    (_batch(data=None), "data_batch_2 has no 'data' entry"),
    (_batch(data=np.zeros((10, 3, 32, 32), np.uint8)), r"'data' has shape \(10, 3, 32, 32\), not \(N, 3072\)"),
    (_batch(data=np.zeros((10, 3072), np.float32)), "'data' has dtype float32, not uint8"),
    (_batch(data=[[0] * 3072] * 10), "'data' is a list, not a numpy array"),
    (_batch(labels=[0] * 9 + [10]), "'labels' holds label 10, outside 0..9"),
    (_batch(labels=[0] * 9 + [-1]), "'labels' holds label -1, outside 0..9"),
    (_batch(labels=[0.5] * 10), "'labels' is not a flat list of integers"),
    (_batch(labels=[0] * 9), "9 'labels' for 10 images"),
    ([1, 2, 3], "holds a list, not the dict of a CIFAR batch"),
])
def test_malformed_batch_is_named(editable, batch, message):
    _write_batch(editable, "data_batch_2", batch)
    with pytest.raises(DataError, match=message) as info:
        load(editable.parent)
    assert "data_batch_2" in str(info.value)


def test_str_keys_are_accepted(editable):
    _write_batch(editable, "data_batch_2", {"data": np.ones((10, 3072), np.uint8), "labels": [3] * 10})
    arrays = load(editable.parent)
    assert len(arrays.train_labels) == 50 and (arrays.train_labels[10:20] == 3).all()


def test_meta_checks(editable):
    _write_batch(editable, "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(DataError, match="batches.meta: 'label_names' lists 2 classes, not 10"):
        load(editable.parent)
    _write_batch(editable, "batches.meta", {b"names": []})
    with pytest.raises(DataError, match="batches.meta has no 'label_names' entry"):
        load(editable.parent)


def test_missing_file_in_folder(editable):
    (editable / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks the CIFAR-10 file\\(s\\) data_batch_3"):
        load(editable.parent)


def test_malicious_batch_is_refused(editable):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    _write_batch(editable, "test_batch", {b"data": Evil()})
    with pytest.raises(DataError, match="test_batch: refuses to load pickle global"):
        load(editable.parent)


# --- damaged or hostile archives -----------------------------------------------------------------

def test_truncated_and_non_gzip_archives(fake_archive_dir, tmp_path):
    data = (fake_archive_dir / ARCHIVE).read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.tar.gz is not a readable CIFAR archive"):
        load(truncated)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a gzip file" * 100)
    with pytest.raises(DataError, match="garbage.tar.gz is not a readable CIFAR archive"):
        load(garbage)
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(gzip.compress(b"\x00" * 10) + b"junk")
    with pytest.raises(DataError):
        load(corrupt)


def _members_of(archive_dir: Path) -> dict[str, bytes]:
    with tarfile.open(archive_dir / ARCHIVE) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_archive_member_checks(fake_archive_dir, tmp_path, monkeypatch):
    members = _members_of(fake_archive_dir)
    missing = dict(members)
    del missing[f"{FOLDER}/data_batch_5"]
    with pytest.raises(DataError, match="lacks the CIFAR-10 member\\(s\\) cifar-10-batches-py/data_batch_5"):
        load(write_tar(tmp_path / "missing.tar.gz", missing))

    linked = dict(members)
    del linked[f"{FOLDER}/test_batch"]
    archive = write_tar(tmp_path / "link.tar.gz", linked, symlinks={f"{FOLDER}/test_batch": "/etc/passwd"})
    with pytest.raises(DataError, match="member cifar-10-batches-py/test_batch is not a regular file"):
        load(archive)

    monkeypatch.setattr(cifar, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(DataError, match="larger than any CIFAR file"):
        load(fake_archive_dir)


def test_unexpected_members_are_ignored_and_nothing_is_written(fake_archive_dir, tmp_path):
    members = {"../escape.txt": b"x", "/abs.txt": b"y", **_members_of(fake_archive_dir)}
    (tmp_path / "box").mkdir()
    archive = write_tar(tmp_path / "box" / "extra.tar.gz", members)
    arrays = load(archive)
    assert len(arrays.train_labels) == 250
    assert sorted(os.listdir(tmp_path / "box")) == ["extra.tar.gz"]
    assert not (tmp_path / "escape.txt").exists()


# --- extraction ----------------------------------------------------------------------------------

def test_extract_archive_round_trip(fake_archive_dir, tmp_path):
    dest = extract_archive(fake_archive_dir / ARCHIVE, tmp_path / "out")
    assert sorted(os.listdir(dest / FOLDER)) == sorted(
        ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])
    assert np.array_equal(load(dest).train_labels, load(fake_archive_dir).train_labels)


@pytest.mark.parametrize("members, symlinks, problem", [
    ({"ok.txt": b"1", "../evil.txt": b"2"}, None, "evil.txt"),
    ({"ok.txt": b"1", "/tmp/abs-evil.txt": b"2"}, None, "abs-evil.txt"),
    ({"ok.txt": b"1"}, {"link": "../../etc/passwd"}, "link"),
])
def test_extract_archive_refuses_hostile_members(tmp_path, members, symlinks, problem):
    archive = write_tar(tmp_path / "evil.tar.gz", members, symlinks=symlinks)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=f"refuses to extract member '[^']*{problem}'"):
        extract_archive(archive, dest)
    assert not dest.exists()                                  # checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_manual_member_check_used_without_tarfile_filters():
    def info(name, kind=tarfile.REGTYPE):
        member = tarfile.TarInfo(name)
        member.type = kind
        return member
    check = archive._manual_member_problem
    assert check(info("cifar-10-batches-py/data_batch_1")) is None
    assert check(info("cifar-10-batches-py", tarfile.DIRTYPE)) is None
    assert check(info("/etc/passwd")) == "absolute path"
    assert check(info("a/../../b")) == "path leaves the destination"
    assert check(info("link", tarfile.SYMTYPE)) == "links are not allowed"
    assert check(info("hard", tarfile.LNKTYPE)) == "links are not allowed"
    assert check(info("dev", tarfile.CHRTYPE)) == "special files are not allowed"


# --- download ------------------------------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, url: str, *, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self._url, self._fail_after = url, fail_after

    def geturl(self) -> str:
        return self._url

    def read(self, n: int = -1) -> bytes:
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(n, 4096) if n > 0 else n)


@pytest.fixture
def archive_bytes(fake_archive_dir) -> bytes:
    return (fake_archive_dir / ARCHIVE).read_bytes()


def _serve(monkeypatch, data: bytes, *, final_url: str | None = None, fail_after: int | None = None):
    requested = []

    def urlopen(url, timeout=None):
        requested.append(url)
        return FakeResponse(data, final_url or url, fail_after=fail_after)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_load_downloads_when_missing(monkeypatch, tmp_path, archive_bytes):
    md5 = hashlib.md5(archive_bytes).hexdigest()
    layout = dataclasses.replace(cifar._LAYOUTS["cifar10"], md5=md5)
    monkeypatch.setitem(cifar._LAYOUTS, "cifar10", layout)
    requested = _serve(monkeypatch, archive_bytes)
    lines = []
    arrays = load_cifar("cifar10", tmp_path / "fresh", download=True, verify=False, log=lines.append)
    assert requested == [cifar.CIFAR10_URL]
    assert (tmp_path / "fresh" / ARCHIVE).read_bytes() == archive_bytes
    assert sorted(os.listdir(tmp_path / "fresh")) == [ARCHIVE]              # no temporary left behind
    assert len(arrays.train_labels) == 250
    progress = [line for line in lines if "%" in line]
    assert len(progress) == 10 and "100%" in progress[-1] and "10%" in progress[0]


def test_download_md5_mismatch_leaves_nothing(monkeypatch, tmp_path, archive_bytes):
    _serve(monkeypatch, archive_bytes)
    with pytest.raises(DataError, match="is corrupt \\(MD5"):
        download_archive("https://example.org/c.tar.gz", tmp_path / "c.tar.gz", "0" * 32, log=quiet)
    assert os.listdir(tmp_path) == []


def test_download_interrupted_leaves_nothing(monkeypatch, tmp_path, archive_bytes):
    _serve(monkeypatch, archive_bytes, fail_after=8192)
    md5 = hashlib.md5(archive_bytes).hexdigest()
    with pytest.raises(DataError, match="could not download https://example.org/c.tar.gz .*--data-dir"):
        download_archive("https://example.org/c.tar.gz", tmp_path / "c.tar.gz", md5, log=quiet)
    assert os.listdir(tmp_path) == []


def test_download_refuses_plain_http(monkeypatch, tmp_path):
    requested = _serve(monkeypatch, b"")
    with pytest.raises(DataError, match="only https:// URLs are allowed"):
        download_archive("http://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", tmp_path / "x", "0" * 32)
    with pytest.raises(DataError, match="redirects to the non-https"):
        _serve(monkeypatch, b"abc", final_url="http://mirror.example/x")
        download_archive("https://example.org/x", tmp_path / "x", "0" * 32, log=quiet)
    assert requested == [] and os.listdir(tmp_path) == []


def test_network_failure_names_url_and_data_dir(monkeypatch, tmp_path):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", tmp_path, download=True, log=quiet)
    message = str(info.value)
    assert cifar.CIFAR10_URL in message and "Name or service not known" in message and "--data-dir" in message


def test_download_target_for_an_archive_path(tmp_path):
    layout = cifar._LAYOUTS["cifar10"]
    assert cifar._download_target(layout, tmp_path / "my.tar.gz") == tmp_path / "my.tar.gz"
    assert cifar._download_target(layout, tmp_path / "dir") == tmp_path / "dir" / ARCHIVE


def test_download_command_extracts_a_local_archive_safely(tmp_path, capsys):
    from cifarkit.cli import main
    from fakes import make_fake_cifar
    root = make_fake_cifar(tmp_path / "d", n_train=50, n_test=10, archive=True)
    assert main(["download", "--data-dir", str(root), "--extract", "--no-verify"]) == 0
    assert (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert f"--data-dir {root / 'cifar-10-batches-py'}" in capsys.readouterr().out
    # A second call finds the extracted folder and reads it.
    assert main(["download", "--data-dir", str(root), "--no-verify"]) == 0


def test_download_command_refuses_a_traversing_archive(tmp_path, capsys):
    from cifarkit.cli import main
    from fakes import make_fake_cifar, write_tar
    import tarfile
    root = make_fake_cifar(tmp_path / "d", n_train=50, n_test=10, archive=True)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    members["../escaped.txt"] = b"x"
    archive.unlink()
    write_tar(archive, members)
    rc = main(["download", "--data-dir", str(root), "--extract", "--no-verify"])
    err = capsys.readouterr().err
    assert rc == 4 and "refuses to extract member '../escaped.txt'" in err
    assert not (tmp_path / "escaped.txt").exists() and not (root / "cifar-10-batches-py").exists()
