"""The competition pickle in, the submission CSV out."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from cifarkit.data.custom_test import load_custom_test, read_submission, write_submission
from cifarkit.errors import DataError
from fakes import make_custom_test_pickle


def raw(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")       # trusted: our own file


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("str_keys", [False, True])
def test_loads_channels_last_into_nchw(tmp_path, protocol, str_keys):
    path = make_custom_test_pickle(tmp_path / "t.pkl", n=20, protocol=protocol, str_keys=str_keys)
    images, ids = load_custom_test(path)
    data = raw(path)["data" if str_keys else b"data"]
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert ids.dtype == np.int64 and np.array_equal(ids, np.arange(20))
    assert np.array_equal(images, data.transpose(0, 3, 1, 2))
    # one pixel by hand: image 3, row 5, column 7, green
    assert images[3, 1, 5, 7] == data[3, 5, 7, 1]


def test_ids_keep_their_order_and_values(tmp_path):
    ids = np.array([5, 3, 9, 0], dtype=np.int32)
    images, loaded = load_custom_test(make_custom_test_pickle(tmp_path / "t.pkl", n=4, ids=ids))
    assert loaded.dtype == np.int64 and loaded.tolist() == [5, 3, 9, 0] and len(images) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(layout="nchw"), r"channels-first; the competition format is channels-last \(N, 32, 32, 3\)"),
    (dict(dtype=np.float32), "'data' has float dtype float32, not uint8"),
    (dict(dtype=np.int16), "'data' has dtype int16, not uint8"),
    (dict(ids=np.arange(9)), "'ids' has 9 entries for 10 images"),
    (dict(ids=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8])), "'ids' repeats id 8"),
    (dict(ids=np.arange(10) + 0.5), "'ids' is not a 1-D array of integers"),
    (dict(ids=np.array(["a"] * 10)), "'ids' is not a 1-D array of integers"),
])
def test_broken_variants_are_explained(tmp_path, kwargs, message):
    path = make_custom_test_pickle(tmp_path / "bad.pkl", n=10, **kwargs)
    with pytest.raises(DataError, match=message):
        load_custom_test(path)


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "holds a list, not a dict"),
    ({b"data": np.zeros((2, 32, 32, 3), np.uint8)}, "has no 'ids' entry"),
    ({b"ids": np.arange(2)}, "has no 'data' entry"),
    ({}, "has no 'data' or 'ids' entry"),
    ({b"data": np.zeros((2, 32, 32), np.uint8), b"ids": np.arange(2)}, r"not 4-D \(N, 32, 32, 3\)"),
    ({b"data": np.zeros((2, 28, 28, 3), np.uint8), b"ids": np.arange(2)}, r"not \(N, 32, 32, 3\)"),
    ({b"data": [[1]], b"ids": np.arange(1)}, "'data' is a list, not a numpy array"),
])
def test_wrong_structure(tmp_path, obj, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=message):
        load_custom_test(path)


def test_missing_truncated_and_malicious_files(tmp_path):
    with pytest.raises(DataError, match="cannot be read"):
        load_custom_test(tmp_path / "absent.pkl")
    good = make_custom_test_pickle(tmp_path / "t.pkl", n=5).read_bytes()
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a valid pickle file"):
        load_custom_test(tmp_path / "cut.pkl")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({b"data": Evil(), b"ids": [0]}))
    with pytest.raises(DataError, match="refuses to load pickle global"):
        load_custom_test(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


# --- submission CSV ------------------------------------------------------------------------------

def test_submission_sorted_by_id_with_default_header(tmp_path):
    path = write_submission(tmp_path / "sub.csv", np.array([2, 0, 1]), np.array([9, 4, 0]))
    assert path.read_text() == "ID,Labels\n0,4\n1,0\n2,9\n"
    header, ids, labels = read_submission(path)
    assert header == ("ID", "Labels") and ids.tolist() == [0, 1, 2] and labels.tolist() == [4, 0, 9]


def test_header_is_configurable_and_lists_work(tmp_path):
    path = write_submission(tmp_path / "s.csv", [1, 0], [3, 7], header=("id", "label"))
    assert path.read_text().splitlines() == ["id,label", "0,7", "1,3"]
    path = write_submission(tmp_path / "c.csv", [0], [42], header=("ID", "Category"), num_classes=100)
    assert read_submission(path)[0] == ("ID", "Category")


@pytest.mark.parametrize("ids, labels, message", [
    ([0, 1], [0], "2 ids but 1 labels"),
    ([0, 0], [1, 2], "ids are not unique"),
    ([0, 1], [0, 10], r"class indices in 0..9"),
    ([0, 1], [-1, 0], r"class indices in 0..9"),
    ([0, 1], [0.5, 1.0], "labels must be a 1-D sequence of integers"),
    ([[0, 1]], [[0, 1]], "ids must be a 1-D sequence of integers"),
])
def test_bad_submissions_write_nothing(tmp_path, ids, labels, message):
    path = tmp_path / "sub.csv"
    path.write_text("previous content\n")
    with pytest.raises(DataError, match=message):
        write_submission(path, ids, labels)
    assert path.read_text() == "previous content\n"
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_no_half_written_file_when_writing_fails(tmp_path, monkeypatch):
    import csv
    path = tmp_path / "sub.csv"
    path.write_text("old\n")

    class Exploding:
        def __init__(self, f, **kw):
            self.f = f

        def writerow(self, row):
            self.f.write("ID,Labels\n")

        def writerows(self, rows):
            raise OSError("disk full")
    monkeypatch.setattr(csv, "writer", Exploding)
    with pytest.raises(OSError):
        write_submission(path, [0, 1], [1, 2])
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["sub.csv"]


def test_read_submission_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("ID,Labels\n0,cat\n")
    with pytest.raises(DataError, match="not two integers"):
        read_submission(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="no two-column header"):
        read_submission(tmp_path / "empty.csv")
