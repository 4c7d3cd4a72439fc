"""Tampered, damaged, old and NaN checkpoints and exports: each ends in one line naming the file and
the key (exit 2, nothing written), never in a KeyError, a TypeError or a plausible submission.
Also what predict must not do quietly: write on a full disk without naming the file, or change ids."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit import __version__
from cifarkit.cli import main
from cifarkit.data.custom_test import read_submission
from cifarkit.errors import CheckpointError
from cifarkit.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from cifarkit.train.checkpoint_schema import (check_finite_logits, check_finite_tensors, validate_export,
                                              validate_training_checkpoint, validate_weights_file)
from fakes import make_custom_test_pickle
from cli_helpers import refusal

# A model of 5,266 parameters that trains one epoch on the fake set in a few seconds.
TINY = ["--recipe", "seed002", "--set", "data.verify=false", "--set", "model.stem_width=8",
        "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]", "--set", "data.val_size=100",
        "--epochs", "1", "--set", "train.batch_size=64", "--set", "augment.policy=none",
        "--set", "augment.erasing_p=0", "--set", "train.precision=fp32", "--device", "cpu", "--no-eval"]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def trained_run(fake_cifar, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def export_dir(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "bundle"
    assert main(["export", str(trained_run), "--weights", "final", "--out", str(out)]) == 0
    return out


@pytest.fixture
def pkl(tmp_path) -> Path:
    return make_custom_test_pickle(tmp_path / "test.pkl", n=20)


def cli_error(capsys, argv, code: int | None = CheckpointError.exit_code) -> str:
    """The one stderr line of a refused command; the exit code is the one documented for checkpoint
    errors unless `code` says otherwise (None: any non-zero code)."""
    return refusal(capsys, argv, code)


def predict_error(capsys, source: Path, pkl: Path, out: Path, code: int | None = CheckpointError.exit_code) -> str:
    """The error line of `predict`, after checking that no submission (nor temporary) was written."""
    before = sorted(os.listdir(out.parent))
    msg = cli_error(capsys, ["predict", source, "--input", pkl, "--output", out, "--device", "cpu"], code)
    assert sorted(os.listdir(out.parent)) == before
    return msg


def tampered_weights(trained_run: Path, tmp_path: Path, change) -> Path:
    """A copy of the run's final.pt, changed by `change(ckpt)`, written as cifarkit writes it."""
    ckpt = load_checkpoint(trained_run / "checkpoints" / "final.pt")
    ckpt.pop("format")
    change(ckpt)
    path = tmp_path / "weights" / "final.pt"
    save_checkpoint(path, ckpt)
    return path


# --- weights files -------------------------------------------------------------------------------

def _set(key, value):
    def change(ckpt):
        ckpt[key] = value
    return change


def _drop(key):
    return lambda ckpt: ckpt.pop(key)


def _norm(key, value):
    def change(ckpt):
        ckpt["normalization"][key] = value
    return change


def _nan_in_first_weight(ckpt):
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))


WEIGHT_CASES = [
    (_drop("normalization"), "'normalization' is missing"),
    (_set("normalization", None), "'normalization' must be a mapping, got NoneType"),
    (_norm("mean", None), "'normalization.mean' must be three finite numbers, got None"),
    (_norm("mean", [0.5, 0.5]), "'normalization.mean' must be three finite numbers"),
    (_norm("std", [0.2, 0.0, 0.2]), "'normalization.std' must be positive"),
    (_norm("std", [0.2, float("nan"), 0.2]), "'normalization.std' must be three finite numbers"),
    (_norm("classes", "cats"), "'normalization.classes' must be a list of at least two class names"),
    (lambda ck: ck["normalization"].pop("classes"), "'normalization.classes' is missing"),
    (_drop("model"), "'model' is missing"),
    (_set("model", "weights"), "'model' must be a mapping, got str"),
    (_set("model", {"conv.weight": [1.0]}), "'model' must map names to tensors; 'conv.weight' holds a list"),
    (_drop("recipe"), "'recipe' is missing"),
    (_set("recipe", [1]), "'recipe' must be a mapping, got list"),
    (_drop("kind"), "'kind' is missing"),
    (_set("kind", "latest"), "'kind' must be one of final, best, ema, swa, got 'latest'"),
    (_nan_in_first_weight, "holds NaN or infinite values"),
]


@pytest.mark.parametrize("change, message", WEIGHT_CASES)
def test_a_broken_weights_file_is_named_with_its_key(capsys, trained_run, tmp_path, pkl, change, message):
    weights = tampered_weights(trained_run, tmp_path, change)
    msg = predict_error(capsys, weights, pkl, tmp_path / "submission.csv")
    assert f"{weights}: " in msg and message in msg


def test_nan_weights_in_a_run_never_give_a_submission(capsys, trained_run, tmp_path, pkl):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for kind in ("final", "best"):
        ckpt = load_checkpoint(run / "checkpoints" / f"{kind}.pt")
        ckpt.pop("format")
        first = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][first] = torch.full_like(ckpt["model"][first], float("inf"))
        save_checkpoint(run / "checkpoints" / f"{kind}.pt", ckpt)
    (tmp_path / "submission.csv").write_text("ID,Labels\n0,3\n")            # an earlier, good one
    msg = predict_error(capsys, run, pkl, tmp_path / "submission.csv")
    assert f"'model.{first}' holds NaN or infinite values" in msg and ".pt: " in msg
    assert (tmp_path / "submission.csv").read_text() == "ID,Labels\n0,3\n"


def test_the_untouched_weights_still_predict(capsys, trained_run, tmp_path, pkl):
    weights = tampered_weights(trained_run, tmp_path, lambda ck: None)
    assert main(["predict", str(weights), "--input", str(pkl), "--output", str(tmp_path / "s.csv"),
                 "--device", "cpu"]) == 0
    assert len(read_submission(tmp_path / "s.csv")[1]) == 20


def test_weights_validator_returns_the_checkpoint(trained_run):
    ckpt = load_checkpoint(trained_run / "checkpoints" / "final.pt")
    assert validate_weights_file(ckpt, "final.pt") is ckpt
    assert ckpt["cifarkit_version"] == __version__


def test_an_older_weights_file_names_what_wrote_it(trained_run, tmp_path):
    ckpt = load_checkpoint(trained_run / "checkpoints" / "final.pt")
    ckpt.pop("cifarkit_version"), ckpt.pop("normalization")
    with pytest.raises(CheckpointError, match="did not record its version; this is"):
        validate_weights_file(ckpt, "old.pt")
    ckpt["cifarkit_version"] = "0.0.9"
    with pytest.raises(CheckpointError, match=r"old.pt: 'normalization' is missing \(written by cifarkit '0.0.9'"):
        validate_weights_file(ckpt, "old.pt")


# --- exports -------------------------------------------------------------------------------------

def tampered_export(export_dir: Path, tmp_path: Path, meta=None, tensors=None) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(export_dir, out)
    if meta is not None:
        (out / "model.json").write_text(json.dumps(meta(json.loads((out / "model.json").read_text()))))
    if tensors is not None:
        from safetensors.torch import load_file, save_file
        save_file(tensors(load_file(str(out / "model.safetensors"))), str(out / "model.safetensors"))
    return out


def _without(key):
    def change(meta):
        meta.pop(key)
        return meta
    return change


EXPORT_CASES = [
    (lambda m: {}, "model.json: 'format' is missing"),
    (lambda m: [1], "model.json must hold a JSON object, got list"),
    (lambda m: None, "model.json must hold a JSON object, got NoneType"),
    (_without("normalization"), "model.json: 'normalization' is missing"),
    (lambda m: {**m, "normalization": None}, "model.json: 'normalization' must be a mapping"),
    (lambda m: {**m, "normalization": {**m["normalization"], "classes": []}},
     "model.json: 'normalization.classes' must be a list of at least two class names"),
    (lambda m: {**m, "normalization": {"mean": m["normalization"]["mean"], "std": m["normalization"]["std"]}},
     "model.json: 'normalization.classes' is missing"),
    (_without("recipe"), "model.json: 'recipe' is missing"),
    (lambda m: {**m, "format": "onnx"}, "model.json: 'format' is 'onnx', not 'cifarkit-export-v1'"),
]


@pytest.mark.parametrize("meta, message", EXPORT_CASES)
def test_a_broken_export_is_named_with_its_key(capsys, export_dir, tmp_path, pkl, meta, message):
    bundle = tampered_export(export_dir, tmp_path, meta=meta)
    msg = predict_error(capsys, bundle, pkl, tmp_path / "submission.csv")
    assert str(bundle) in msg and message in msg


def test_nan_in_an_export_names_the_tensor(capsys, export_dir, tmp_path, pkl):
    def poison(tensors):
        name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        return tensors
    bundle = tampered_export(export_dir, tmp_path, tensors=poison)
    msg = predict_error(capsys, bundle, pkl, tmp_path / "submission.csv")
    assert "model.safetensors: '" in msg and "holds NaN or infinite values" in msg


def test_the_untouched_export_still_predicts(capsys, export_dir, tmp_path, pkl):
    bundle = tampered_export(export_dir, tmp_path, meta=lambda m: m)
    assert main(["predict", str(bundle), "--input", str(pkl), "--output", str(tmp_path / "s.csv"),
                 "--device", "cpu"]) == 0
    meta = json.loads((bundle / "model.json").read_text())
    assert validate_export(meta, {"w": torch.ones(2)}, "model.json", "model.safetensors") is meta


# --- training checkpoints (last.pt, read on --resume) ---------------------------------------------

@pytest.fixture
def last(trained_run) -> dict:
    return load_checkpoint(trained_run / "checkpoints" / "last.pt")


def test_a_sound_training_checkpoint_passes_and_its_state_rebuilds(last):
    from cifarkit.train.state import TrainState
    checked = validate_training_checkpoint(last, "checkpoints/last.pt")
    assert TrainState(**checked["state"]) == TrainState(**last["state"])
    assert checked["model"] is last["model"] and checked["optimizer"] is last["optimizer"]


def _ckpt_change(fn):
    def apply(ckpt):
        ckpt = copy.deepcopy(ckpt)
        fn(ckpt)
        return ckpt
    return apply


def _momentum_nan(ck):
    buffers = [s for s in ck["optimizer"]["state"].values() if "momentum_buffer" in s]
    buffers[0]["momentum_buffer"].fill_(float("nan"))


TRAINING_CASES = [
    (lambda ck: ck.pop("optimizer"), "checkpoints/last.pt: 'optimizer' is missing"),
    (lambda ck: ck.update(state="epoch 3"), "'state' must be a mapping, got str"),
    (lambda ck: ck["state"].update(extra=1), "unknown key 'state.extra'"),
    (lambda ck: ck["state"].update(epoch="three"), "'state.epoch' must be an integer, got 'three'"),
    (lambda ck: ck["state"].pop("step"), "'state.step' is missing"),
    (lambda ck: ck["state"].update(batch=-1), "'state.batch' must be >= 0"),
    (lambda ck: ck["state"].update(lr_factor=float("nan")), "'state.lr_factor' must be a finite number"),
    (lambda ck: ck.update(normalization=None), "'normalization' must be a mapping, got NoneType"),
    (lambda ck: ck.pop("normalization"), "'normalization' is missing"),
    (lambda ck: ck["optimizer"].pop("param_groups"), "'optimizer.param_groups' is missing"),
    (lambda ck: ck.update(model=[]), "'model' must be a mapping, got list"),
    (lambda ck: ck["recipe"]["train"].update(ema_decay=0.9), "'ema' is missing, but the checkpoint's recipe uses it"),
    (lambda ck: ck.update(ema={"num_updates": 3}), "'ema.module' is missing"),
    (lambda ck: ck.update(lookahead={"slow": "x"}), "'lookahead.slow' must be a list of tensors"),
    (lambda ck: ck["recipe"]["train"].update(lr="fast"), "'recipe' is not a valid recipe"),
    (_momentum_nan, "'optimizer.state."),
]


@pytest.mark.parametrize("change, message", TRAINING_CASES)
def test_a_broken_training_checkpoint_is_named_with_its_key(last, change, message):
    with pytest.raises(CheckpointError) as info:
        validate_training_checkpoint(_ckpt_change(change)(last), "checkpoints/last.pt")
    text = str(info.value)
    assert text.startswith("checkpoints/last.pt") and message in text and "\n" not in text


def test_a_training_checkpoint_from_before_newer_state_fields_loads(last):
    older = copy.deepcopy(last)
    for key in ("lr_factor", "skipped_steps", "partial", "train_seconds"):
        older["state"].pop(key)
    older.pop("cifarkit_version")
    checked = validate_training_checkpoint(older, "last.pt")
    assert checked["state"]["lr_factor"] == 1.0 and checked["state"]["partial"] == {}
    assert checked["state"]["epoch"] == last["state"]["epoch"]


def test_a_checkpoint_of_another_format_says_which(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": "cifarkit-checkpoint-v2", "cifarkit_version": "0.9.0", "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"format 'cifarkit-checkpoint-v2' by cifarkit 0.9.0; this "
                                              rf"cifarkit \({__version__}\) reads '{FORMAT}'"):
        load_checkpoint(path)


# --- what a file that is not a checkpoint is called ------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_are_not_said_to_run_code(capsys, tmp_path, pkl, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    msg = predict_error(capsys, path, pkl, tmp_path / "submission.csv")
    assert f"{path} is not a loadable cifarkit checkpoint (not a torch file" in msg
    assert "code" not in msg


def test_a_pickled_module_is_said_to_reference_code(capsys, tmp_path, pkl):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    msg = predict_error(capsys, path, pkl, tmp_path / "submission.csv")
    assert "refers to 'torch.nn.modules.linear.Linear'" in msg and "could run code" in msg


# --- finite checks as helpers ----------------------------------------------------------------------

def test_check_finite_logits():
    check_finite_logits(torch.randn(4, 10), "final.pt")
    check_finite_logits(np.zeros((3, 10), np.float32), "final.pt")
    check_finite_logits(torch.tensor([[1, 2]]), "int outputs are always finite")
    logits = torch.randn(5, 10)
    logits[1, 3], logits[4, 0] = float("nan"), float("-inf")
    with pytest.raises(CheckpointError, match="final.pt gives non-finite outputs .* for 2 of 5 images"):
        check_finite_logits(logits, "final.pt")


def test_check_finite_tensors_names_the_first_bad_one():
    tensors = {"a": torch.ones(3), "b": {"c": [torch.zeros(2), torch.tensor([1.0, float("inf")])]}}
    with pytest.raises(CheckpointError, match=r"x.pt: 'b.c.1' holds NaN or infinite values"):
        check_finite_tensors(tensors, "x.pt")
    check_finite_tensors({"n": torch.tensor([1, 2])}, "x.pt")           # integer buffers


# --- predict: full disk, exact ids, planes -----------------------------------------------------------

def test_a_full_disk_during_predict_names_the_output(capsys, monkeypatch, trained_run, tmp_path, pkl):
    out = tmp_path / "sub" / "submission.csv"
    out.parent.mkdir()
    out.write_text("ID,Labels\n0,1\n")

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", enospc)
    msg = predict_error(capsys, trained_run, pkl, out, code=None)     # an OSError: the file-system code
    assert f"{out}: No space left on device" in msg
    assert out.read_text() == "ID,Labels\n0,1\n"


def test_uint64_ids_come_out_of_predict_unchanged(capsys, trained_run, tmp_path):
    ids = np.array([2**64 - 1, 2**63, 7, 2**63 + 12], dtype=np.uint64)
    path = make_custom_test_pickle(tmp_path / "big_ids.pkl", n=4, ids=ids)
    out = tmp_path / "s.csv"
    assert main(["predict", str(trained_run), "--input", str(path), "--output", str(out), "--device", "cpu"]) == 0
    rows = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert rows == [str(v) for v in sorted(int(i) for i in ids)]
    assert not any(r.startswith("-") for r in rows)


def test_predict_accepts_rows_of_planes(capsys, trained_run, tmp_path):
    nhwc = make_custom_test_pickle(tmp_path / "nhwc.pkl", n=20)
    import pickle
    with open(nhwc, "rb") as f:
        obj = pickle.load(f)                                             # our own file
    rows = tmp_path / "rows.pkl"
    rows.write_bytes(pickle.dumps({b"data": obj[b"data"].transpose(0, 3, 1, 2).reshape(20, 3072),
                                   b"ids": obj[b"ids"]}))
    for source, out in ((nhwc, "a.csv"), (rows, "b.csv")):
        assert main(["predict", str(trained_run), "--input", str(source), "--output", str(tmp_path / out),
                     "--device", "cpu"]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


@pytest.mark.parametrize("recipe, extra", [
    ("seed000", ["--set", "model.stem_width=8", "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]",
                 "--set", "train.swa_start=0.5", "--set", "data.val_size=100"]),         # EMA and SWA
    ("fast94-sgd", ["--set", "model.widths=[8,16,16]", "--set", "train.micro_batch=0"]),   # lookahead
])
def test_real_checkpoints_with_averaging_pass(fake_cifar, tmp_path, recipe, extra):
    out = tmp_path / recipe
    assert main(["train", "--recipe", recipe, *extra, "--set", "data.verify=false", "--set", "data.train_subset=64",
                 "--set", "train.batch_size=32", "--set", "eval.batch_size=100", "--set", "train.precision=fp32", "--epochs", "2",
                 "--device", "cpu", "--no-eval", "--data-dir", str(fake_cifar), "--out", str(out)]) == 0
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    used = [k for k in ("ema", "swa", "lookahead") if last.get(k) is not None]
    assert used == (["ema", "swa"] if recipe == "seed000" else ["lookahead"])
    validate_training_checkpoint(last, out / "checkpoints" / "last.pt")
    for kind in ("final", "ema", "swa") if recipe == "seed000" else ("final",):
        validate_weights_file(load_checkpoint(out / "checkpoints" / f"{kind}.pt"), kind)
    with pytest.raises(CheckpointError, match=f"'{used[0]}' is missing, but the checkpoint's recipe uses it"):
        validate_training_checkpoint({**last, used[0]: None}, "last.pt")
