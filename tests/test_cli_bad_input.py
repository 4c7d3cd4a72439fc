"""Bad input through the `cifarkit` command: each case ends in one clear error line, never a crash.

Every case calls the CLI in-process and checks the contract a user relies on: a non-zero exit,
exactly one line on stderr starting with "cifarkit: error:", no traceback, and no half-written
output (no run directory, no submission file, no temporary file). One subprocess test checks the
same through the real console entry point.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cifarkit.cli import main
from fakes import make_custom_test_pickle, make_fake_cifar

# A model of 5,266 parameters that trains one epoch on the fake set in a few seconds.
TINY = ["--set", "data.verify=false", "--set", "model.stem_width=8", "--set", "model.widths=[8,16]",
        "--set", "model.blocks=[1,1]", "--set", "data.val_size=100", "--epochs", "1",
        "--set", "train.batch_size=64", "--set", "augment.policy=none", "--set", "augment.erasing_p=0",
        "--set", "train.precision=fp32", "--device", "cpu", "--no-eval"]
RECIPE = ["--recipe", "seed002"]


# --- helpers -----------------------------------------------------------------------------------

def run_cli(capsys, argv: list) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one in-process CLI call; an escaping exception fails the test."""
    capsys.readouterr()                         # drop anything printed before this call
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def user_error(capsys, argv: list) -> str:
    """Run the CLI and return its error line, after checking the whole error contract."""
    rc, _, err = run_cli(capsys, argv)
    return error_line(rc, err, argv)


def error_line(rc: int, err: str, argv: list) -> str:
    """The one error line in `err`; fails unless the exit code and stderr keep the contract."""
    lines = err.strip().splitlines()
    assert rc != 0, f"exit code 0 for {argv}"
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("cifarkit: error: "), err
    assert "Traceback" not in err
    assert "\x1b" not in err, f"terminal escape codes in the message: {err!r}"
    return lines[0]


def succeeds(capsys, argv: list) -> str:
    rc, out, err = run_cli(capsys, argv)
    assert rc == 0, err
    return out


def train_argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *RECIPE, "--data-dir", data_dir, "--out", out, *TINY, *extra]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def write_png(path: Path, size: int = 32) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    # Default outputs (runs/, submission.csv, ./data) must never land in the repository.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIFARKIT_DATA", raising=False)


@pytest.fixture(scope="module")
def trained_run(fake_cifar, tmp_path_factory):
    """One tiny finished run (recipe.yaml, checkpoints/final.pt, best.pt, last.pt), shared read-only."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main([str(a) for a in train_argv(fake_cifar, out)]) == 0
    assert (out / "checkpoints" / "final.pt").is_file()
    return out


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    return write_png(tmp_path_factory.mktemp("images") / "good.png")


# --- data ----------------------------------------------------------------------------------------

def test_missing_data_dir_without_download(capsys, tmp_path):
    msg = user_error(capsys, train_argv(tmp_path / "nowhere", tmp_path / "run", "--set", "data.download=false"))
    assert "CIFAR-10 not found" in msg and "nowhere" in msg and "--data-dir" in msg


def test_failed_start_leaves_no_run_behind(capsys, tmp_path):
    out = tmp_path / "run"
    user_error(capsys, train_argv(tmp_path / "nowhere", out, "--set", "data.download=false"))
    assert not (out / "recipe.yaml").exists()


def _archive(tmp_path: Path) -> bytes:
    good = make_fake_cifar(tmp_path / "good", n_train=50, n_test=10, archive=True)
    return (good / "cifar-10-python.tar.gz").read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_broken_archive(capsys, tmp_path, damage):
    from cifarkit.data.cifar import load_cifar
    blob = _archive(tmp_path)
    # Control: the intact archive loads, so the failure below comes from the damage alone.
    load_cifar("cifar10", tmp_path / "good", download=False, verify=False, log=lambda m: None)
    broken = tmp_path / "broken"
    broken.mkdir()
    data = blob[: len(blob) // 2] if damage == "truncated" else b"plain text, not a gzip stream\n" * 20
    (broken / "cifar-10-python.tar.gz").write_bytes(data)
    msg = user_error(capsys, train_argv(broken, tmp_path / "run", "--set", "data.download=false"))
    assert "cifar-10-python.tar.gz is not a readable CIFAR archive" in msg


def _rename_data(b):
    return {(b"pixels" if k == b"data" else k): v for k, v in b.items()}


BATCH_DAMAGE = {
    "wrong keys": (_rename_data, "data_batch_2 has no 'data' entry (found keys: batch_label, filenames, labels, pixels)"),
    "no labels": (lambda b: {k: v for k, v in b.items() if k != b"labels"}, "has no 'labels' entry"),
    "NCHW shape": (lambda b: {**b, b"data": b[b"data"].reshape(-1, 3, 32, 32)}, "not (N, 3072)"),
    "float pixels": (lambda b: {**b, b"data": b[b"data"].astype(np.float32) / 255}, "dtype float32, not uint8"),
    "label out of range": (lambda b: {**b, b"labels": [10] * len(b[b"labels"])}, "holds label 10, outside 0..9"),
    "not a dict": (lambda b: list(b.values()), "holds a list, not the dict of a CIFAR batch"),
}


@pytest.mark.parametrize("damage", list(BATCH_DAMAGE))
def test_broken_batch_pickle(capsys, tmp_path, damage):
    change, expected = BATCH_DAMAGE[damage]
    root = make_fake_cifar(tmp_path / "data", n_train=100, n_test=20)
    batch_path = root / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(batch_path.read_bytes(), encoding="bytes")
    batch_path.write_bytes(pickle.dumps(change(batch), protocol=2))
    msg = user_error(capsys, train_argv(root, tmp_path / "run"))
    assert "data_batch_2" in msg and expected in msg


def test_fake_set_with_verification_on_is_not_cifar10(capsys, fake_cifar, tmp_path):
    msg = user_error(capsys, train_argv(fake_cifar, tmp_path / "run", "--set", "data.verify=true"))
    assert "not the 50000 of CIFAR-10" in msg and "data.verify=false" in msg


def _small_arrays(n_train: int = 40, n_test: int = 10):
    from cifarkit.data.cifar import CifarArrays
    rng = np.random.default_rng(0)
    return CifarArrays(rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), np.arange(n_train) % 10,
                       rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), np.arange(n_test) % 10,
                       [f"c{i}" for i in range(10)], "small-set")


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def test_content_hash_mismatch_in_the_library(monkeypatch):
    from cifarkit.data import cifar
    from cifarkit.errors import DataError
    arrays = _small_arrays()
    monkeypatch.setattr(cifar, "CIFAR10_COUNTS", {"train": 40, "test": 10})
    with pytest.raises(DataError, match="train images do not match official CIFAR-10"):
        cifar.verify_cifar10(arrays)
    # Control: with this set's own hashes as the reference, the same check passes...
    own = {"train images": _sha(arrays.train_images), "train labels": _sha(arrays.train_labels.astype(np.uint8)),
           "test images": _sha(arrays.test_images), "test labels": _sha(arrays.test_labels.astype(np.uint8))}
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", own)
    cifar.verify_cifar10(arrays)
    # ...and one changed test label is caught.
    arrays.test_labels[3] = (arrays.test_labels[3] + 1) % 10
    with pytest.raises(DataError, match="test labels do not match"):
        cifar.verify_cifar10(arrays)


def test_content_hash_mismatch_through_the_cli(capsys, monkeypatch, fake_cifar, tmp_path):
    from cifarkit.data import cifar
    # Counts as in the fake set, so the check reaches the hashes.
    monkeypatch.setattr(cifar, "CIFAR10_COUNTS", {"train": 600, "test": 200})
    msg = user_error(capsys, train_argv(fake_cifar, tmp_path / "run", "--set", "data.verify=true"))
    assert "train images do not match official CIFAR-10" in msg and "corrupt or modified" in msg


# --- the competition pickle for `predict` --------------------------------------------------------

class _ShellPayload:
    """Unpickling this with the standard pickle runs `touch <sentinel>`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


def _bad_pickle(kind: str, path: Path) -> Path:
    if kind == "NCHW":
        return make_custom_test_pickle(path, n=20, layout="nchw")
    if kind == "float":
        return make_custom_test_pickle(path, n=20, dtype=np.float32)
    if kind == "ids wrong length":
        return make_custom_test_pickle(path, n=20, ids=np.arange(7))
    if kind == "duplicate ids":
        return make_custom_test_pickle(path, n=20, ids=np.r_[np.arange(19), 4])
    if kind == "float ids":
        return make_custom_test_pickle(path, n=20, ids=np.arange(20) + 0.5)
    if kind == "missing keys":
        path.write_bytes(pickle.dumps({b"images": np.zeros((2, 32, 32, 3), np.uint8)}))
    elif kind == "missing ids":
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 32, 32, 3), np.uint8)}))
    elif kind == "not a pickle":
        path.write_text("ID,Labels\n0,3\n")
    elif kind == "a list":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    elif kind == "malicious":
        path.write_bytes(pickle.dumps({b"data": _ShellPayload(path.parent / "PWNED"), b"ids": [0]}))
    return path


PICKLE_CASES = {
    "NCHW": "which is channels-first; the competition format is channels-last (N, 32, 32, 3)",
    "float": "'data' has float dtype float32, not uint8 pixels in 0..255",
    "ids wrong length": "'ids' has 7 entries for 20 images",
    "duplicate ids": "'ids' repeats id 4",
    "float ids": "'ids' is not a 1-D array of integers",
    "missing keys": "has no 'data' or 'ids' entry",
    "missing ids": "has no 'ids' entry",
    "not a pickle": "is not a valid pickle file",
    "a list": "holds a list, not a dict with 'data' and 'ids'",
    "malicious": "refuses to load pickle global 'posix.system'",
}


@pytest.mark.parametrize("kind", list(PICKLE_CASES))
def test_bad_competition_pickle(capsys, trained_run, tmp_path, kind):
    (tmp_path / "in").mkdir()
    bad = _bad_pickle(kind, tmp_path / "in" / "test.pkl")
    out_dir = tmp_path / "out"
    msg = user_error(capsys, ["predict", trained_run, "-i", bad, "-o", out_dir / "sub.csv", "--device", "cpu"])
    assert str(bad) in msg and PICKLE_CASES[kind] in msg
    assert files_under(out_dir) == []               # no CSV, no temporary file, not even the folder
    assert not (tmp_path / "in" / "PWNED").exists()


def test_malicious_pickle_payload_is_real(tmp_path):
    # Control for the case above: the same payload does run code under the standard unpickler.
    sentinel = tmp_path / "PWNED"
    pickle.loads(pickle.dumps({b"data": _ShellPayload(sentinel)}))
    assert sentinel.exists()


def test_failure_after_the_input_check_leaves_existing_csv_unchanged(capsys, trained_run, tmp_path):
    good = make_custom_test_pickle(tmp_path / "test.pkl", n=20)
    truncated_run = tmp_path / "run"
    shutil.copytree(trained_run, truncated_run)
    final = truncated_run / "checkpoints" / "final.pt"
    final.write_bytes(final.read_bytes()[:4000])  # cut inside the zip: torch's error is caught
    (truncated_run / "checkpoints" / "best.pt").unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sub.csv").write_text("ID,Labels\n0,1\n")
    msg = user_error(capsys, ["predict", truncated_run, "-i", good, "-o", out_dir / "sub.csv", "--device", "cpu"])
    assert "final.pt is not a loadable cifarkit checkpoint" in msg
    assert (out_dir / "sub.csv").read_text() == "ID,Labels\n0,1\n"
    assert files_under(out_dir) == ["sub.csv"]


def test_bad_input_leaves_existing_csv_unchanged(capsys, trained_run, tmp_path):
    bad = make_custom_test_pickle(tmp_path / "test.pkl", n=20, layout="nchw")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sub.csv").write_text("ID,Labels\n0,1\n")
    user_error(capsys, ["predict", trained_run, "-i", bad, "-o", out_dir / "sub.csv", "--device", "cpu"])
    assert (out_dir / "sub.csv").read_text() == "ID,Labels\n0,1\n"
    assert files_under(out_dir) == ["sub.csv"]


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_unwritable_submission_path(capsys, trained_run, tmp_path, where):
    good = make_custom_test_pickle(tmp_path / "test.pkl", n=20)
    if where == "a directory":
        output = tmp_path / "results"
        output.mkdir()
        expected = "it is a folder; name a file in it"
    else:
        (tmp_path / "results").write_text("a file")
        output = tmp_path / "results" / "sub.csv"
        expected = f"{tmp_path / 'results'} is not a folder"
    argv = ["predict", trained_run, "-i", good, "-o", output, "--device", "cpu"]
    rc, _, err = run_cli(capsys, argv)
    msg = error_line(rc, err, argv)
    assert rc == 9 and f"cannot write to {output}: {expected}" in msg       # an output error, like train's and bench's
    assert sorted(os.listdir(tmp_path)) == ["results", "test.pkl"]


def test_good_pickle_writes_the_submission(capsys, trained_run, tmp_path):
    # Control for the cases above: the same command with a valid file succeeds.
    good = make_custom_test_pickle(tmp_path / "test.pkl", n=20)
    succeeds(capsys, ["predict", trained_run, "-i", good, "-o", tmp_path / "sub.csv", "--device", "cpu"])
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "ID,Labels" and len(lines) == 21


# --- image files for `predict` -------------------------------------------------------------------

def _bad_image(kind: str, folder: Path) -> Path:
    path = folder / ("photo" if kind == "a directory" else "photo.png")
    if kind == "text named .png":
        path.write_text("hello, I am not a picture\n")
    elif kind == "truncated PNG":
        data = write_png(folder / "full.png", size=64).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "a directory":
        path.mkdir()
    return path


IMAGE_CASES = {
    "text named .png": "is not an image file PIL can read",
    "truncated PNG": "is a damaged or unsupported image (image file is truncated",
    "missing file": "does not exist",
    "a directory": "is a directory, not an image file",
}


@pytest.mark.parametrize("kind", list(IMAGE_CASES))
def test_bad_image_file(capsys, trained_run, image_file, tmp_path, kind):
    bad = _bad_image(kind, tmp_path)
    # A good image first: one bad file among good ones still fails, naming the bad one.
    msg = user_error(capsys, ["predict", trained_run, "-i", image_file, bad, "--device", "cpu"])
    assert str(bad) in msg and IMAGE_CASES[kind] in msg


def test_good_image_is_labelled(capsys, trained_run, image_file):
    out = succeeds(capsys, ["predict", trained_run, "-i", image_file, "--device", "cpu"])
    assert str(image_file) in out


# --- recipes -------------------------------------------------------------------------------------

RECIPE_CASES = {
    # case: (arguments, given after the tiny run's own so that they are the ones that count; message)
    "unknown key": (["--set", "train.lrr=0.1"], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
    "unknown section key": (["--set", "augment.cutmix=0.5"], "did you mean 'augment.cutmix_p'?"),
    "wrong type": (["--set", "train.momentum=high"], "'train.momentum' must be a number, got 'high'"),
    "wrong type 2": (["--set", "model.widths=8"], "'model.widths' must be a list, got 8"),
    "wrong choice": (["--set", "train.optimizer=adam"], "'train.optimizer' must be one of"),
    "out of range": (["--set", "train.lr=-0.1"], "'train.lr' must be positive"),
    "out of range 2": (["--set", "augment.mixup_p=1.5"], "'augment.mixup_p' must be in [0, 1]"),
    "unknown recipe": (["--recipe", "seed02"], "seed02"),
    "missing recipe file": (["--recipe", "mine.yaml"], "recipe file not found: mine.yaml"),
    "invalid YAML": (["--recipe", "broken.yaml"], "recipe broken.yaml is not valid YAML"),
    "--set without =": (["--set", "train.lr"], "override 'train.lr' must look like key=value"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe_fails_before_any_work(capsys, fake_cifar, tmp_path, case):
    recipe_args, expected = RECIPE_CASES[case]
    (tmp_path / "broken.yaml").write_text("train:\n  epochs: [1, 2\n  lr: 0.1\n")   # the cwd is tmp_path
    out = tmp_path / "run"
    msg = user_error(capsys, [*train_argv(fake_cifar, out), *recipe_args])
    assert expected in msg
    assert not out.exists()


def test_unknown_recipe_names_the_nearest_one(capsys):
    msg = user_error(capsys, ["summary", "--recipe", "seed02"])
    assert "seed02" in msg and "did you mean" in msg and "seed002" in msg


def test_unknown_recipe_message_wording(capsys):
    msg = user_error(capsys, ["summary", "--recipe", "seed02"])
    assert "unknown recipe 'seed02'" in msg


# --- the parameter budget ------------------------------------------------------------------------

TINY_MODEL = ["--set", "model.stem_width=8", "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]"]


def test_summary_over_budget_fails(capsys):
    msg = user_error(capsys, ["summary", *RECIPE, *TINY_MODEL, "--set", "budget=1000"])
    assert "model has 5,266 parameters, over the budget of 1,000 by 4,266" in msg


@pytest.mark.parametrize("lift", [["--allow-over-budget"], ["--set", "allow_over_budget=true"]])
def test_summary_over_budget_allowed(capsys, lift):
    out = succeeds(capsys, ["summary", *RECIPE, *TINY_MODEL, "--set", "budget=1000", *lift])
    assert "5,266 parameters" in out


def test_train_over_budget_fails_before_training(capsys, fake_cifar, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(fake_cifar, out, "--set", "budget=1000")
    rc, stdout, err = run_cli(capsys, argv)
    msg = error_line(rc, err, argv)
    assert "over the budget of 1,000" in msg and "allow_over_budget" in msg
    assert "epoch 1/1" not in stdout and not (out / "checkpoints" / "last.pt").exists()


def test_train_over_budget_allowed(capsys, fake_cifar, tmp_path):
    out = tmp_path / "run"
    succeeds(capsys, train_argv(fake_cifar, out, "--set", "budget=1000", "--set", "allow_over_budget=true"))
    assert (out / "checkpoints" / "final.pt").is_file()


# --- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_weights(fake_cifar, tmp_path_factory) -> Path:
    """final.pt of a run whose stages are 8/12 wide instead of 8/16."""
    out = tmp_path_factory.mktemp("runs") / "other"
    assert main([str(a) for a in train_argv(fake_cifar, out, "--set", "model.widths=[8,12]")]) == 0
    return out / "checkpoints" / "final.pt"


def test_run_whose_weights_disagree_with_its_recipe(capsys, trained_run, other_weights, image_file, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(trained_run, mixed)
    for kind in ("final", "best"):
        shutil.copy(other_weights, mixed / "checkpoints" / f"{kind}.pt")
    msg = user_error(capsys, ["predict", mixed, "-i", image_file, "--device", "cpu"])
    assert "widths" in msg or "architecture" in msg


def test_weights_of_another_architecture_are_named(capsys, trained_run, other_weights):
    # The library's own mismatch message, reached by loading the foreign state into this run's model.
    from cifarkit.errors import CheckpointError
    from cifarkit.evaluate.loading import load_weights_file
    from cifarkit.models.registry import build_model
    from cifarkit.rundir import RunDir
    from cifarkit.train.checkpoint import load_checkpoint, load_weights
    model = build_model(RunDir(trained_run).load_recipe().model, 10)
    with pytest.raises(CheckpointError, match=r"different architecture: '.*' has shape \(12,"):
        load_weights(model, load_checkpoint(other_weights)["model"], str(other_weights))
    assert load_weights_file(other_weights).recipe.model.widths == [8, 12]


def _torch_file(kind: str, path: Path, trained_run: Path) -> Path:
    data = (trained_run / "checkpoints" / "final.pt").read_bytes()
    if kind == "truncated .pt":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "cut early .pt":
        path.write_bytes(data[:4000])
    elif kind == "text named .pt":
        path.write_text("hello")
    elif kind == "other text named .pt":
        path.write_text("not a checkpoint\n")
    elif kind == "plain state dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif kind == "dict without marker":
        torch.save({"model": torch.nn.Linear(2, 2).state_dict(), "epoch": 3}, path)
    elif kind == "pickled nn.Module":
        torch.save(torch.nn.Linear(2, 2), path)
    return path


TORCH_FILES = ["truncated .pt", "cut early .pt", "text named .pt", "other text named .pt", "plain state dict",
               "dict without marker", "pickled nn.Module"]


@pytest.mark.parametrize("kind", TORCH_FILES)
def test_bad_weights_file(capsys, trained_run, image_file, tmp_path, kind):
    weights = _torch_file(kind, tmp_path / "model.pt", trained_run)
    msg = user_error(capsys, ["predict", weights, "-i", image_file, "--device", "cpu"])
    assert str(weights) in msg and "cifarkit checkpoint" in msg
    assert "weights_only" not in msg            # never advise loading a file that can run code


def test_truncated_weights_in_a_run_are_reported(capsys, trained_run, image_file, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "best.pt").write_text("")       # empty: torch reports EOF, which is caught
    msg = user_error(capsys, ["predict", run, "-i", image_file, "--weights", "best", "--device", "cpu"])
    assert "best.pt is not a loadable cifarkit checkpoint" in msg


# --- devices -------------------------------------------------------------------------------------

@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_train_on_cuda_without_gpu(capsys, no_gpu, fake_cifar, tmp_path):
    out = tmp_path / "run"
    msg = user_error(capsys, train_argv(fake_cifar, out, "--device", "cuda"))
    assert "no CUDA GPU is available" in msg and "--device cpu" in msg
    assert not out.exists()


@pytest.mark.parametrize("what", ["pickle", "image"])
def test_predict_on_cuda_without_gpu(capsys, no_gpu, trained_run, image_file, tmp_path, what):
    source = make_custom_test_pickle(tmp_path / "test.pkl", n=20) if what == "pickle" else image_file
    msg = user_error(capsys, ["predict", trained_run, "-i", source, "-o", tmp_path / "sub.csv", "--device", "cuda"])
    assert "no CUDA GPU is available" in msg
    assert not (tmp_path / "sub.csv").exists()


# --- run directories -----------------------------------------------------------------------------

def test_out_dir_that_already_holds_a_run(capsys, fake_cifar, trained_run):
    before = files_under(trained_run), (trained_run / "recipe.yaml").read_bytes()
    msg = user_error(capsys, train_argv(fake_cifar, trained_run))
    assert "already holds a run" in msg and f"--resume {trained_run}" in msg
    assert (files_under(trained_run), (trained_run / "recipe.yaml").read_bytes()) == before


@pytest.mark.parametrize("target", ["data folder", "missing"])
def test_resume_of_a_directory_that_is_not_a_run(capsys, fake_cifar, tmp_path, target):
    folder = fake_cifar if target == "data folder" else tmp_path / "absent"
    msg = user_error(capsys, ["train", "--resume", folder, "--data-dir", fake_cifar, "--device", "cpu", "--no-eval"])
    assert f"{folder} is not a cifarkit run directory" in msg
    assert not (tmp_path / "absent").exists()


def test_resume_with_a_changed_recipe(capsys, fake_cifar, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    saved = (run / "recipe.yaml").read_text()
    argv = ["train", "--resume", run, "--data-dir", fake_cifar, "--device", "cpu", "--no-eval",
            "--set", "train.lr=0.05"]
    msg = user_error(capsys, argv)
    assert "train.lr: 0.1 -> 0.05" in msg and "--force" in msg
    assert (run / "recipe.yaml").read_text() == saved
    out = succeeds(capsys, argv + ["--force"])
    assert "train.lr" in out
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["lr"] == 0.05


def test_out_under_a_regular_file(capsys, fake_cifar, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "run"
    argv = train_argv(fake_cifar, out)
    rc, stdout, err = run_cli(capsys, argv)
    msg = error_line(rc, err, argv)
    assert f"cannot write to {out}" in msg and "Not a directory" in msg
    assert stdout == ""                         # refused before any data was read or model built
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


def test_out_under_a_read_only_directory(capsys, fake_cifar, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("permissions are not enforced for this user (root)")
        msg = user_error(capsys, train_argv(fake_cifar, parent / "run"))
        assert f"cannot write to {parent / 'run'}" in msg and "Permission denied" in msg
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o700)


def test_bench_out_that_cannot_be_written_fails_before_training(capsys, fake_cifar, tmp_path):
    """The result file is checked before the warm-up, not written to after minutes of timing."""
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "bench.json"
    argv = ["bench", "--recipe", "fast94", "--seeds", "1", "--device", "cpu", "--data-dir", fake_cifar,
            "--out", out, "--set", "data.verify=false"]
    rc, stdout, err = run_cli(capsys, argv)
    msg = error_line(rc, err, argv)
    assert rc == 9 and f"cannot write to {out}: {out.parent} is not a folder" in msg
    assert "warm-up" not in stdout and "seed 0" not in stdout


# --- evaluate ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["data folder", "missing"])
def test_evaluate_a_directory_that_is_not_a_run(capsys, fake_cifar, tmp_path, target):
    folder = fake_cifar if target == "data folder" else tmp_path / "absent"
    msg = user_error(capsys, ["evaluate", folder, "--data-dir", fake_cifar, "--device", "cpu"])
    assert f"{folder} is not a cifarkit run directory (no recipe.yaml)" in msg


def test_evaluate_a_run_without_weights(capsys, fake_cifar, trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "recipe.yaml", run / "recipe.yaml")
    msg = user_error(capsys, ["evaluate", run, "--data-dir", fake_cifar, "--device", "cpu"])
    assert "has no trained weights yet" in msg
    assert files_under(run) == ["recipe.yaml"]


# --- the real console entry point ----------------------------------------------------------------

def test_console_entry_point_prints_one_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "cifarkit", "summary", "--recipe", "seed002",
                           "--set", "train.lrr=0.1"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 3           # a bad recipe (2 is argparse's usage error)
    assert proc.stderr.splitlines() == ["cifarkit: error: unknown key 'train.lrr'; did you mean 'train.lr'?"]
    assert proc.stdout == ""
