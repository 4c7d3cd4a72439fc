"""End to end through the CLI on synthetic CIFAR-format data: train, resume, evaluate, predict, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit.device import cpu_has_native_bf16
from cifarkit.cli import main
from cifarkit.data.custom_test import read_submission
from fakes import make_custom_test_pickle

TINY = ["--recipe", "seed000", "--set", "data.verify=false", "--set", "data.val_size=100",
        "--set", "model.stem_width=8", "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]",
        "--set", "train.batch_size=64", "--set", "train.warmup_epochs=1", "--seed", "1"]


@pytest.fixture(scope="module")
def trained_run(fake_cifar, tmp_path_factory):
    """A tiny SE-ResNet trained 2 epochs with the full seed000 machinery (AutoAugment, erasing,
    MixUp/CutMix, focal loss, EMA, SWA, ensemble, reference 000's 6-view TTA)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    rc = main(["train", *TINY, "--epochs", "2", "--data-dir", str(fake_cifar), "--out", str(run),
               "--set", "train.swa_start=0.5"])
    assert rc == 0
    return run


def test_train_writes_a_complete_run_directory(trained_run):
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                 "checkpoints/final.pt", "checkpoints/best.pt", "checkpoints/ema.pt", "checkpoints/swa.pt"):
        assert (trained_run / name).is_file(), name
    lines = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "lr"} <= set(lines[0])
    run_info = json.loads((trained_run / "run.json").read_text())
    assert run_info["versions"]["torch"] == torch.__version__ and run_info["seed"] == 1
    assert run_info["train"]["epochs_run"] == 2
    # seed000 trains in 'auto' precision: what that chose here is recorded with the reason
    assert run_info["hardware"]["native_bf16"] == cpu_has_native_bf16()
    assert run_info["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_evaluate_reports_every_model_and_writes_plots(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert set(summary["models"]) == {"final", "best", "ema", "swa", "ensemble"}
    assert summary["models"]["ensemble"]["members"] == ["best", "ema", "swa"]
    # seed000 deploys its ensemble, as the original did (eval.select); the others are still scored
    assert summary["selected"] == "ensemble" and summary["selected_by"] == "recipe (eval.select)"
    assert summary["tta"] == "views000"             # seed000's test-time views
    for entry in summary["models"].values():
        test = entry["test"]
        assert 0 <= test["accuracy"] <= 1 and len(test["confusion_matrix"]) == 10
        assert sum(map(sum, test["confusion_matrix"])) == 200
    assert summary["test_accuracy"] == summary["models"][summary["selected"]]["test"]["accuracy"]
    pngs = sorted(p.name for p in (trained_run / "plots").glob("*.png"))
    assert "training_curves.png" in pngs and "confusion_swa.png" in pngs and "roc_ensemble.png" in pngs
    for png in (trained_run / "plots").glob("*.png"):
        with Image.open(png) as im:
            im.verify()


def test_predict_writes_a_sorted_submission(trained_run, tmp_path, capsys):
    pkl = make_custom_test_pickle(tmp_path / "cifar_test_nolabel.pkl", n=40,
                                  ids=np.random.default_rng(0).permutation(40))
    out = tmp_path / "submission.csv"
    assert main(["predict", str(trained_run), "--input", str(pkl), "--output", str(out)]) == 0
    header, ids, labels = read_submission(out)
    assert header == ("ID", "Labels")
    assert list(ids) == list(range(40)) and all(0 <= v < 10 for v in labels)
    other = tmp_path / "other.csv"
    assert main(["predict", str(trained_run), "--input", str(pkl), "--output", str(other),
                 "--header", "id,label", "--weights", "ensemble", "--self-normalize"]) == 0
    assert other.read_text().splitlines()[0] == "id,label"


def test_predict_auto_follows_an_ensemble_selection(trained_run, tmp_path, capsys):
    """summary.json selected the ensemble: `--weights auto` must predict with all its members."""
    from cifarkit.evaluate.loading import load_models
    from cifarkit.evaluate.predict import predict_array
    assert json.loads((trained_run / "summary.json").read_text())["selected"] == "ensemble"
    images = np.random.default_rng(1).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    auto = load_models(trained_run, "auto")
    assert [m.source.rsplit("/", 1)[-1] for m in auto] == ["best.pt", "ema.pt", "swa.pt"]
    ensemble = predict_array(load_models(trained_run, "ensemble"), images, tta=None, device="cpu")
    np.testing.assert_allclose(predict_array(auto, images, tta=None, device="cpu"), ensemble)
    single = predict_array(load_models(trained_run, "best"), images, tta=None, device="cpu")
    assert not np.allclose(single, ensemble)
    capsys.readouterr()
    assert main(["export", str(trained_run), "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "the selected model is the ensemble best+ema+swa" in err and "--weights" in err
    assert not (tmp_path / "x").exists()


def test_predict_labels_image_files_and_export_matches(trained_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate((32, 48)):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    capsys.readouterr()
    assert main(["predict", str(trained_run), "--weights", "final", "--input", *paths, "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert [r["resized"] for r in direct] == [False, True]
    for r in direct:            # the top 3 of 10 classes: a share of the probability mass, best first
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6 and probs[0] >= 0.1       # the top class holds at least 1/10
    export_dir = tmp_path / "export"
    assert main(["export", str(trained_run), "--weights", "final", "--out", str(export_dir)]) == 0
    assert (export_dir / "model.safetensors").is_file()
    meta = json.loads((export_dir / "model.json").read_text())
    assert meta["recipe"]["model"]["widths"] == [8, 16]
    capsys.readouterr()
    assert main(["predict", str(export_dir), "--input", *paths, "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [r["top"] for r in exported] == [r["top"] for r in direct]


def experiment(recipe, data_dir):
    """A quiet CPU experiment with the data loaded."""
    from cifarkit.experiment import Experiment
    exp = Experiment(recipe, device="cpu", log=lambda m: None)
    exp.load_data(data_dir)
    return exp


def _weights(run):
    from cifarkit.train.checkpoint import load_checkpoint
    return load_checkpoint(run / "checkpoints" / "final.pt")["model"]


def _metrics_without_timing(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in rows]


@pytest.mark.parametrize("stop_at_step", [3, 5])     # mid-epoch 1 and mid-epoch 2 (5 steps per epoch)
def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(fake_cifar, tmp_path, monkeypatch, capsys,
                                                                  stop_at_step):
    import signal

    from cifarkit.train import trainer as training
    common = [*TINY, "--epochs", "2", "--data-dir", str(fake_cifar), "--no-eval"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *common, "--out", str(straight)]) == 0

    original_step = training.Trainer._step

    def step_then_signal(self, x, y, epoch, batch):
        out = original_step(self, x, y, epoch, batch)
        if self.state.step + 1 == stop_at_step:
            signal.raise_signal(signal.SIGTERM)        # arrives during training, as `kill` would
        return out

    monkeypatch.setattr(training.Trainer, "_step", step_then_signal)
    assert main(["train", *common, "--out", str(resumed)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "SIGTERM received" in err and f"cifarkit train --resume {resumed}" in err
    monkeypatch.setattr(training.Trainer, "_step", original_step)
    assert main(["train", "--resume", str(resumed), "--data-dir", str(fake_cifar), "--no-eval"]) == 0

    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics_without_timing(straight) == _metrics_without_timing(resumed)


def test_smoke_on_the_real_dataset(real_data, tmp_path):
    """The default recipe end to end on the real CIFAR-10 copy, shrunk to a few steps."""
    run = tmp_path / "real"
    rc = main(["train", "--data-dir", str(real_data), "--out", str(run), "--epochs", "1",
               "--set", "data.val_size=500", "--set", "data.train_subset=2000", "--set", "train.batch_size=256",
               "--set", "train.warmup_epochs=0.5",
               "--set", "eval.tta=none"])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recipe"] == "fast94" and summary["models"]["final"]["test"]["num_samples"] == 10000
    assert 0.2 < summary["test_accuracy"] <= 1.0          # far above chance after 7 steps on 2,000 images


def test_micro_batches_accumulate_the_same_gradient(fake_cifar, tmp_path):
    """Without BN, splitting a batch into micro-batches changes nothing but rounding."""
    from cifarkit.config import load_recipe
    grads = []
    for micro in (0, 16):
        recipe = load_recipe("seed002", ["data.verify=false", "data.val_size=100", "train.batch_size=64",
                                          f"train.micro_batch={micro}", "train.precision=fp32",
                                          "model.stem_width=8", "model.widths=[8]", "model.blocks=[1]"])
        trainer = experiment(recipe, fake_cifar).build_trainer(progress=False)
        trainer.model.eval()                       # BN uses running statistics: batch-independent
        x, y = next(iter(trainer.train_loader))
        trainer.optimizer.zero_grad()
        loss, hits = trainer._forward_backward(x, y)
        grads.append((loss, hits, [p.grad.clone() for p in trainer.model.parameters()]))
    (l0, h0, g0), (l1, h1, g1) = grads
    assert torch.allclose(l0, l1, atol=1e-6) and h0 == h1
    diffs = [(a - b).abs().max().item() for a, b in zip(g0, g1)]
    assert max(diffs) < 1e-5, diffs


def test_progressive_resize_trains_early_epochs_small_and_the_rest_native(fake_cifar, tmp_path):
    from cifarkit.config import load_recipe
    recipe = load_recipe("fast94", ["data.verify=false", "data.train_subset=128", "train.epochs=3",
                                    "train.batch_size=64", "train.micro_batch=0", "model.widths=[8,16,16]",
                                    "augment.resize_schedule=[[16,1],[24,2]]"])
    trainer = experiment(recipe, fake_cifar).build_trainer(progress=False)
    sides = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: sides.append(args[0].shape[-1]) if m.training else None)
    trainer.fit()
    assert sides == [16, 16, 24, 24, 32, 32]      # two steps per epoch


@pytest.mark.parametrize("name", ["fast95", "fast96"])
def test_speed_recipes_fit_the_budget_and_train(name, fake_cifar, tmp_path):
    """Full-width fast95 / fast96 for two short epochs on tiny data: a smoke test of the recipe
    (residual blocks, cutout, 4-px translation), not a measurement of what it reaches."""
    from cifarkit.config import load_recipe
    from cifarkit.models.registry import count_parameters
    recipe = load_recipe(name, ["data.verify=false", "data.train_subset=128", "train.epochs=2",
                                "train.batch_size=64", "train.micro_batch=32", "train.warmup_epochs=0.5"])
    trainer = experiment(recipe, fake_cifar).build_trainer(progress=False)
    assert count_parameters(trainer.model) < 5_000_000
    summary = trainer.fit()
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_whitening_bias_group_decays_to_zero_when_it_freezes(fake_cifar, tmp_path):
    """airbench94_muon's whitening bias: its own lr scale and decay, and no change once frozen."""
    from cifarkit.config import load_recipe
    recipe = load_recipe("fast94", ["data.verify=false", "data.train_subset=128", "train.epochs=3",
                                    "train.batch_size=32", "train.micro_batch=0", "model.widths=[8,16,16]",
                                    "model.whiten_bias_epochs=1", "train.warmup_epochs=0",
                                    "train.whiten_bias_lr_scale=64", "train.whiten_bias_decay=true",
                                    "train.lookahead_every=0"])   # lookahead would pull the frozen bias
    trainer = experiment(recipe, fake_cifar).build_trainer(progress=False)
    group = next(g for g in trainer.optimizer.param_groups if g["name"] == "whiten_bias")
    assert group["params"] == [trainer.model.whiten.bias]
    assert group["weight_decay"] == pytest.approx(recipe.train.weight_decay / 64)
    seen = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append((group["lr"], trainer.model.whiten.bias.detach().clone())))
    trainer.fit()
    lrs = [lr for lr, _ in seen]
    assert lrs[:4] == pytest.approx([64 * recipe.train.lr * (1 - s / 4) for s in range(4)])  # 4 steps an epoch
    assert lrs[4:] == [0.0] * 8
    assert not torch.equal(seen[0][1], seen[4][1])                  # it learned during epoch 1
    assert all(torch.equal(seen[4][1], b) for _, b in seen[4:])       # and never moved after
    assert torch.equal(seen[4][1], trainer.model.whiten.bias)
