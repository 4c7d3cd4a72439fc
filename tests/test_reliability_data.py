"""Data files that must cost little to refuse (nested-list pickles, gzip bombs, long tar headers),
ids that must keep their values, the competition pickle's (N, 3072) form, downloads and writes
that fail without leaving anything behind. Memory and time of the refusals are asserted."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import pickle
import tarfile
import time
import tracemalloc
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from cifarkit.data import cifar
from cifarkit.data.archive import read_members
from cifarkit.data.cifar import load_cifar
from cifarkit.data.custom_test import load_custom_test, read_submission, write_submission
from cifarkit.data.download import download_archive
from cifarkit.errors import DataError
from cifarkit.fsio import write_text
from fakes import fake_images, make_custom_test_pickle, make_fake_cifar
from cli_helpers import refusal

FOLDER, ARCHIVE = "cifar-10-batches-py", "cifar-10-python.tar.gz"
MiB = 2**20


def quiet(_msg: str) -> None:
    pass


def refusal_cost(call) -> tuple[str, float, int]:
    """(DataError message, seconds, peak bytes traced) of a call that must be refused."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError) as info:
            call()
        return str(info.value), time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def cli_error(capsys, argv) -> str:
    """The one stderr line of a refused command; the exit code is the one documented for data errors."""
    return refusal(capsys, argv, DataError.exit_code)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)


def shared_list(depth: int) -> list:
    """A list holding the same list twice, `depth` levels deep: a few hundred bytes of pickle,
    2**depth integers once numpy expands it."""
    node: object = 0
    for _ in range(depth):
        node = [node, node]
    return node


# --- nested lists --------------------------------------------------------------------------------

@pytest.fixture
def editable(tmp_path) -> Path:
    make_fake_cifar(tmp_path / "c10", n_train=50, n_test=10)
    return tmp_path / "c10" / FOLDER


@pytest.mark.parametrize("labels, message", [
    ([shared_list(21)] * 10, r"'labels' is not a flat list of integers \(item 0 is a list\)"),
    (shared_list(22), "2 'labels' for 10 images"),
])
def test_nested_label_lists_are_refused_before_numpy_expands_them(editable, labels, message):
    blob = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": labels}, protocol=2)
    assert len(blob) < 32_000            # 30,720 bytes of pixels (plus pickle framing); the labels: a few hundred
    (editable / "data_batch_2").write_bytes(blob)
    text, seconds, peak = refusal_cost(lambda: load_cifar("cifar10", editable.parent, download=False,
                                                          verify=False, log=quiet))
    assert "data_batch_2" in text and __import__("re").search(message, text)
    # numpy would build 2**22 int64 (32 MiB) here, in seconds; refused in well under both.
    assert peak < 4 * MiB and seconds < 2.0


@pytest.mark.parametrize("ids, message", [
    ([shared_list(21)] * 10, r"'ids' is not a 1-D array of integers \(item 0 is a list\)"),
    (shared_list(22), "'ids' has 2 entries for 10 images"),
    ((1.5,) * 10, r"'ids' is not a 1-D array of integers \(item 0 is a float\)"),
    ([True] * 10, r"item 0 is a bool"),
])
def test_nested_id_lists_are_refused_before_numpy_expands_them(tmp_path, ids, message):
    path = make_custom_test_pickle(tmp_path / "bomb.pkl", n=10, ids=ids)
    assert path.stat().st_size < 32_000
    text, seconds, peak = refusal_cost(lambda: load_custom_test(path))
    assert str(path) in text and __import__("re").search(message, text)
    assert peak < 4 * MiB and seconds < 2.0


def test_nested_ids_through_the_cli_write_nothing(capsys, tmp_path):
    path = make_custom_test_pickle(tmp_path / "bomb.pkl", n=10, ids=[shared_list(21)] * 10)
    msg = cli_error(capsys, ["predict", tmp_path / "no-run", "--input", path, "--output", tmp_path / "out.csv"])
    assert "bomb.pkl: 'ids' is not a 1-D array of integers" in msg
    assert sorted(os.listdir(tmp_path)) == ["bomb.pkl"]


def test_flat_label_and_id_lists_still_load(editable, tmp_path):
    arrays = load_cifar("cifar10", editable.parent, download=False, verify=False, log=quiet)
    assert arrays.train_labels.dtype == np.int64 and len(arrays.train_labels) == 50
    _, ids = load_custom_test(make_custom_test_pickle(tmp_path / "t.pkl", n=4, ids=[7, 3, 5, 1]))
    assert ids.tolist() == [7, 3, 5, 1]


# --- gzip bombs and long tar headers -------------------------------------------------------------

def gzip_tar(path: Path, parts: list) -> Path:
    """A .tar.gz from raw 512-byte-aligned parts: bytes, or an int for that many zero bytes
    (compressed 1 MiB at a time, never held whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        for part in parts:
            if isinstance(part, int):
                chunk = bytes(MiB)
                for offset in range(0, part, MiB):
                    f.write(packer.compress(chunk[: min(MiB, part - offset)]))
            else:
                f.write(packer.compress(part))
        f.write(packer.compress(bytes(1024)) + packer.flush())     # end-of-archive blocks
    return path


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode = size, kind, 0o644
    return info.tobuf(format=tarfile.GNU_FORMAT)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """data_batch_1 declared and stored as 200 MiB of zeros: about 200 KB of .tar.gz. The old
    cap (256 MiB per member) let it through: 200 MiB in memory before any check."""
    return gzip_tar(tmp_path_factory.mktemp("bomb") / ARCHIVE, [header(f"{FOLDER}/data_batch_1", 200 * MiB), 200 * MiB])


def test_gzip_bomb_is_refused_from_the_member_header(bomb):
    assert bomb.stat().st_size < 1 * MiB
    text, seconds, peak = refusal_cost(lambda: load_cifar("cifar10", bomb, download=False, log=quiet))
    assert f"member {FOLDER}/data_batch_1 is {200 * MiB} bytes, larger than any CIFAR file" in text
    assert peak < 8 * MiB and seconds < 2.0


def test_gzip_bomb_through_the_cli(capsys, bomb, tmp_path):
    out = tmp_path / "run"
    msg = cli_error(capsys, ["train", "--recipe", "fast94", "--data-dir", bomb, "--out", out, "--device", "cpu"])
    assert str(bomb) in msg and "larger than any CIFAR file" in msg
    assert not out.exists() or not any(out.iterdir())       # nothing written (at most the folder probed)


def test_a_huge_long_name_record_is_refused_before_it_is_read(tmp_path):
    # GNU long-name records are read into memory whole by tarfile, before any member is seen.
    path = gzip_tar(tmp_path / ARCHIVE, [header("././@LongLink", 64 * MiB, tarfile.GNUTYPE_LONGNAME), 64 * MiB,
                                         header(f"{FOLDER}/batches.meta", 0)])
    text, seconds, peak = refusal_cost(lambda: load_cifar("cifar10", path, download=False, log=quiet))
    assert "tar header record of 67108864 bytes" in text and str(path) in text
    assert peak < 8 * MiB and seconds < 2.0


def test_the_decompressed_stream_is_capped_as_a_whole(tmp_path):
    # Members nobody asked for are skipped, but not without end: the whole stream has a cap.
    path = gzip_tar(tmp_path / "x.tar.gz", [header("junk", 16 * MiB), 16 * MiB, header("wanted", 4), b"abcd".ljust(512, b"\0")])
    with pytest.raises(DataError, match="decompresses to more than"):
        read_members(path, {"wanted": "w"}, lambda name: MiB, total_bytes=8 * MiB)
    assert read_members(path, {"wanted": "w"}, lambda name: MiB, total_bytes=32 * MiB) == {"w": b"abcd"}


def test_each_member_is_capped_by_what_its_images_need():
    c10, c100 = cifar._LAYOUTS["cifar10"], cifar._LAYOUTS["cifar100"]
    pixels = 10_000 * 3072
    # the official file, and a Python 3 protocol-2 re-pickle (bytes as latin-1 text: up to 2 bytes each), fit ...
    assert c10.max_bytes("data_batch_1") >= max(31_035_704, 2 * pixels + 100_000)
    assert c10.max_bytes("data_batch_1") < 2.2 * 31_035_704                        # ... and little more
    assert c100.max_bytes("train") >= 2 * 5 * pixels and c100.max_bytes("test") >= 2 * pixels
    assert c10.max_bytes("batches.meta") <= MiB
    assert c10.max_total_bytes() < 420 * MiB


def test_an_oversized_file_in_an_extracted_folder_is_not_read(editable):
    with open(editable / "data_batch_1", "r+b") as f:
        f.truncate(200 * MiB)                            # sparse: no disk used
    text, seconds, peak = refusal_cost(lambda: load_cifar("cifar10", editable.parent, download=False, log=quiet))
    assert "data_batch_1 is larger than any CIFAR file" in text
    assert peak < 4 * MiB and seconds < 2.0


def test_extraction_refuses_more_than_the_cap(tmp_path):
    archive = gzip_tar(tmp_path / "big.tar.gz", [header("big", 4 * MiB), 4 * MiB])
    from cifarkit.data.archive import extract_archive
    with pytest.raises(DataError, match="refuses to extract"):
        extract_archive(archive, tmp_path / "dest", max_bytes=MiB)
    assert not (tmp_path / "dest").exists()
    assert (extract_archive(archive, tmp_path / "ok", max_bytes=8 * MiB) / "big").stat().st_size == 4 * MiB


# --- ids of 64 bits --------------------------------------------------------------------------------

@pytest.mark.parametrize("as_list", [False, True])
def test_uint64_ids_keep_their_values_through_the_csv(tmp_path, as_list):
    values = [2**64 - 1, 5, 2**63, 2**63 - 1]
    ids = values if as_list else np.array(values, dtype=np.uint64)
    _, loaded = load_custom_test(make_custom_test_pickle(tmp_path / "t.pkl", n=4, ids=ids))
    assert [int(v) for v in loaded] == values                       # never wrapped to negatives
    write_submission(tmp_path / "s.csv", loaded, [1, 2, 3, 4])
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[1:] == ["5,2", f"{2**63 - 1},4", f"{2**63},3", f"{2**64 - 1},1"]     # sorted by value
    _, read_ids, labels = read_submission(tmp_path / "s.csv")
    assert [int(v) for v in read_ids] == sorted(values) and labels.tolist() == [2, 4, 3, 1]


@pytest.mark.parametrize("ids", [[2**64, 1, 2], [-1, 2**63, 3]])
def test_ids_wider_than_64_bits_are_refused(tmp_path, ids):
    path = make_custom_test_pickle(tmp_path / "t.pkl", n=3, ids=ids)
    with pytest.raises(DataError, match="'ids' holds integers that do not fit in 64 bits"):
        load_custom_test(path)


def test_signed_ids_stay_int64(tmp_path):
    _, loaded = load_custom_test(make_custom_test_pickle(tmp_path / "t.pkl", n=3, ids=[-5, 0, 2**63 - 1]))
    assert loaded.dtype == np.int64 and loaded.tolist() == [-5, 0, 2**63 - 1]


# --- the competition pickle as (N, 3072) ---------------------------------------------------------

def _pickle(path: Path, data: np.ndarray) -> Path:
    path.write_bytes(pickle.dumps({b"data": data, b"ids": np.arange(len(data))}))
    return path


def test_rows_of_planes_load_like_channels_last(tmp_path):
    nchw = fake_images(np.arange(40) % 10, 10, seed=3)
    from_rows, _ = load_custom_test(_pickle(tmp_path / "rows.pkl", nchw.reshape(40, 3072)))
    from_nhwc, _ = load_custom_test(_pickle(tmp_path / "nhwc.pkl", nchw.transpose(0, 2, 3, 1).copy()))
    assert np.array_equal(from_rows, nchw) and np.array_equal(from_nhwc, nchw)


def test_interleaved_rows_are_refused_with_the_reshape(tmp_path):
    nhwc = fake_images(np.arange(40) % 10, 10, seed=3).transpose(0, 2, 3, 1)
    path = _pickle(tmp_path / "flat.pkl", nhwc.reshape(40, 3072))
    with pytest.raises(DataError, match=r"flat.pkl: 'data' has shape \(40, 3072\) .* data.reshape\(-1, 32, 32, 3\)"):
        load_custom_test(path)


def test_rows_of_real_cifar_images(real_data, tmp_path):
    test = load_cifar("cifar10", real_data, download=False, verify=False, log=quiet).test_images[:2000]
    images, _ = load_custom_test(_pickle(tmp_path / "rows.pkl", test.reshape(-1, 3072)))
    assert np.array_equal(images, test)
    for count in (1, 2000):        # one image is enough to tell the layouts apart on real photos
        path = _pickle(tmp_path / "flat.pkl", test[:count].transpose(0, 2, 3, 1).reshape(-1, 3072))
        with pytest.raises(DataError, match="look like flattened"):
            load_custom_test(path)


def test_other_two_dimensional_data_is_still_refused(tmp_path):
    with pytest.raises(DataError, match=r"not 4-D \(N, 32, 32, 3\) or \(N, 3072\)"):
        load_custom_test(_pickle(tmp_path / "x.pkl", np.zeros((4, 1024), np.uint8)))


# --- downloads that fail ---------------------------------------------------------------------------

def _no_network(monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_a_failed_download_leaves_no_folders(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    monkeypatch.setenv("CIFARKIT_DATA", str(tmp_path / "cache" / "cifar"))
    with pytest.raises(DataError, match="could not download"):
        load_cifar("cifar10", log=quiet)
    assert os.listdir(tmp_path) == []


def test_a_failed_download_through_the_cli_leaves_no_folders(capsys, monkeypatch, tmp_path):
    _no_network(monkeypatch)
    msg = cli_error(capsys, ["download", "--data-dir", tmp_path / "a" / "b"])
    assert "could not download" in msg and "--data-dir" in msg
    assert os.listdir(tmp_path) == []


def test_a_full_disk_during_the_download_leaves_no_folders(monkeypatch, tmp_path):
    class Response(io.BytesIO):
        headers = {"Content-Length": "3"}

        def geturl(self):
            return "https://example.org/x.tar.gz"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(b"abc"))
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(DataError, match=r"No space left on device: '.*x.tar.gz'"):
        download_archive("https://example.org/x.tar.gz", tmp_path / "d" / "x.tar.gz",
                         hashlib.md5(b"abc").hexdigest(), log=quiet)
    assert os.listdir(tmp_path) == []


def test_an_existing_folder_is_kept_after_a_failed_download(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError):
        load_cifar("cifar10", tmp_path / "data", log=quiet)
    assert os.listdir(tmp_path) == ["data"]


def test_cifar100_downloads_from_its_own_url(monkeypatch, tmp_path):
    blob = (make_fake_cifar(tmp_path / "src", "cifar100", n_train=200, n_test=100, archive=True)
            / "cifar-100-python.tar.gz").read_bytes()
    layout = dataclasses.replace(cifar._LAYOUTS["cifar100"], md5=hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(cifar._LAYOUTS, "cifar100", layout)
    requested = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(blob))}

        def geturl(self):
            return requested[-1]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: requested.append(url) or Response(blob))
    arrays = load_cifar("cifar100", tmp_path / "fresh", label_mode="coarse", log=quiet)
    assert requested == [cifar.CIFAR100_URL] and arrays.num_classes == 20
    assert os.listdir(tmp_path / "fresh") == ["cifar-100-python.tar.gz"]


# --- full disks ------------------------------------------------------------------------------------

def _enospc(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_and_leaves_nothing(monkeypatch, tmp_path):
    target = tmp_path / "new" / "deeper" / "summary.json"
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        write_text(target, "{}")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert str(target) in str(info.value)
    assert os.listdir(tmp_path) == []               # no temporary file, no folder it made


def test_a_full_disk_keeps_the_previous_file(monkeypatch, tmp_path):
    target = tmp_path / "submission.csv"
    target.write_text("old\n")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError, match="submission.csv"):
        write_submission(target, [0, 1], [1, 2])
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["submission.csv"]


def test_other_errors_inside_a_write_keep_their_own_wording(tmp_path):
    from cifarkit.fsio import atomic_open
    with pytest.raises(ConnectionResetError) as info:
        with atomic_open(tmp_path / "x.bin", "wb"):
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
    assert info.value.filename is None and os.listdir(tmp_path) == []
