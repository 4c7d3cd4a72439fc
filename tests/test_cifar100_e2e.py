"""CIFAR-100 end to end through the CLI: the fast-c100 recipe on a synthetic CIFAR-100 archive,
with the 100 fine labels and with the 20 coarse ones (`data.label_mode`)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torchvision

from cifarkit.cli import main
from cifarkit.config import load_recipe, recipe_to_dict
from cifarkit.data import cifar
from cifarkit.data.cifar import load_cifar
from cifarkit.errors import ConfigError
from cifarkit.train.checkpoint import load_checkpoint
from fakes import make_fake_cifar

# fast94's machinery (whitened stem, Muon, alternating flips, selective TTA) on an 8/16/16 net.
SMALL = ["--set", "train.epochs=1", "--set", "train.batch_size=50", "--set", "train.micro_batch=25",
         "--set", "model.widths=[8,16,16]", "--set", "eval.batch_size=100", "--device", "cpu"]


@pytest.fixture(scope="module")
def fake_c100(tmp_path_factory):
    return make_fake_cifar(tmp_path_factory.mktemp("c100"), "cifar100", n_train=400, n_test=200, archive=True)


@pytest.mark.parametrize("label_mode, classes", [("fine", 100), ("coarse", 20)])
def test_fast_c100_trains_and_evaluates(fake_c100, tmp_path, monkeypatch, label_mode, classes):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"c100-{label_mode}"
    rc = main(["train", "--recipe", "fast-c100", "--set", f"data.label_mode={label_mode}", *SMALL,
               "--data-dir", str(fake_c100), "--out", str(out)])
    assert rc == 0
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                 "checkpoints/final.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar100" and summary["recipe"] == "fast-c100"
    test = summary["models"]["final"]["test"]
    assert test["num_classes"] == classes and len(test["confusion_matrix"]) == classes
    assert sum(map(sum, test["confusion_matrix"])) == 200
    assert isinstance(summary["test_accuracy"], float) and math.isfinite(summary["test_accuracy"])
    assert 0 <= summary["test_accuracy"] <= 1
    # The labels really are the ones asked for: coarse class k is fine classes 5k..5k+4 in the fakes.
    names = test["class_names"]
    assert names[3] == ("fine_03" if label_mode == "fine" else "coarse_03")
    # Normalization comes from the training images, not CIFAR-10's constants.
    weights = load_checkpoint(out / "checkpoints" / "final.pt")
    arrays = load_cifar("cifar100", fake_c100, verify=False, label_mode=label_mode, log=lambda m: None)
    pixels = arrays.train_images.astype(np.float64) / 255
    assert np.allclose(weights["normalization"]["mean"], pixels.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(weights["normalization"]["std"], pixels.std(axis=(0, 2, 3)), atol=1e-4)
    assert len(weights["normalization"]["classes"]) == classes


def test_label_mode_is_validated():
    with pytest.raises(ConfigError, match="'data.label_mode: coarse' needs 'data.dataset: cifar100'"):
        load_recipe("fast94", ["data.label_mode=coarse"])
    with pytest.raises(ConfigError, match="'data.label_mode' must be one of 'fine', 'coarse'"):
        load_recipe("fast-c100", ["data.label_mode=medium"])


def test_a_recipe_knows_how_many_classes_its_data_has(fake_c100):
    for overrides, classes in (([], 100), (["data.label_mode=coarse"], 20)):
        data = load_recipe("fast-c100", overrides).data
        assert data.num_classes == classes
        assert load_cifar("cifar100", fake_c100, verify=False, label_mode=data.label_mode,
                          log=lambda m: None).num_classes == classes
    assert load_recipe("fast94").data.num_classes == 10
    assert "num_classes" not in recipe_to_dict(load_recipe("fast-c100"))["data"]      # derived, not a key


def test_fast_c100_is_fast94_with_the_cifar100_data():
    c100, fast94 = load_recipe("fast-c100"), load_recipe("fast94")
    assert c100.data.dataset == "cifar100" and c100.data.label_mode == "fine"
    assert c100.model == fast94.model and c100.train == fast94.train and c100.augment == fast94.augment
    assert c100.eval == fast94.eval


def test_download_path_knows_cifar100_as_torchvision_does():
    layout = cifar._LAYOUTS["cifar100"]
    assert layout.url == torchvision.datasets.CIFAR100.url
    assert layout.md5 == torchvision.datasets.CIFAR100.tgz_md5
    assert layout.archive == torchvision.datasets.CIFAR100.filename
    assert layout.folder == torchvision.datasets.CIFAR100.base_folder


def test_coarse_labels_on_cifar10_are_refused_before_anything_is_written(fake_cifar, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    capsys.readouterr()
    rc = main(["train", "--recipe", "fast94", "--set", "data.label_mode=coarse", "--data-dir", str(fake_cifar),
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == ConfigError.exit_code != 0 and len(err) == 1
    assert err[0] == ("cifarkit: error: 'data.label_mode: coarse' needs 'data.dataset: cifar100' "
                      "(CIFAR-10 has one set of labels)")
    assert not out.exists() and os.listdir(tmp_path) == []
