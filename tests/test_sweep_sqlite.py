"""A 6-trial sweep on synthetic data with the default SQLite storage, end to end through the CLI:
an over-budget model pruned before training, a hopeless trial pruned by the median pruner, the
test set never touched, the report, and the best recipe re-trained to the same validation accuracy."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
import yaml
from PIL import Image

from cifarkit.cli import main
from cifarkit.config import load_recipe
from cifarkit.experiment import Experiment
from cifarkit.train.run import train_run
from sweep_fakes import GOOD, HOPELESS, OVER_BUDGET, write_inputs

STUDY = "tiny-s"


@pytest.fixture(scope="module")
def swept(fake_cifar, tmp_path_factory):
    """The study after `cifarkit sweep --trials 6`, its first three trials queued in advance (so
    the budget and the pruner are exercised whatever the sampler proposes), and the splits read."""
    folder = tmp_path_factory.mktemp("sweep")
    write_inputs(folder)
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    splits_read = []
    original_split = Experiment.split

    def spy(self, name):
        splits_read.append(name)
        return original_split(self, name)

    mp.setattr(Experiment, "split", spy)
    (folder / "runs" / STUDY).mkdir(parents=True)
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///runs/{STUDY}/study.db", direction="maximize")
    for params in (OVER_BUDGET, GOOD, HOPELESS):
        study.enqueue_trial(params)
    rc = main(["sweep", "--recipe", "tiny.yaml", "--space", "space.yaml", "--trials", "6", "--study", STUDY,
               "--data-dir", str(fake_cifar), "--device", "cpu"])
    mp.undo()
    assert rc == 0
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{folder}/runs/{STUDY}/study.db")
    return folder, study, splits_read


def test_six_trials_finish_with_unique_numbers(swept):
    _, study, _ = swept
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)


def test_over_budget_model_is_pruned_before_any_training(swept):
    folder, study, _ = swept
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.user_attrs["pruned_reason"] == "over budget" and t.user_attrs["params_count"] > 20000
    assert "over the budget of 20,000" in t.user_attrs["pruned_detail"]
    assert t.intermediate_values == {}                     # no epoch was trained or reported
    assert not (folder / "runs" / STUDY / "trial-0").exists()


def test_hopeless_trial_is_pruned_by_the_pruner_and_stays_a_resumable_run(swept):
    folder, study, _ = swept
    t = study.trials[2]
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["pruned_reason"] == "pruner"
    epochs = t.user_attrs["epochs_run"]
    assert 1 <= epochs < 4 and sorted(t.intermediate_values) == list(range(1, epochs + 1))
    run = folder / "runs" / STUDY / "trial-2"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == epochs and (run / "checkpoints" / "last.pt").is_file()
    assert json.loads((run / "run.json").read_text())["sweep"]["pruned"].startswith(f"pruned after epoch {epochs}")


def test_complete_trials_are_ordinary_runs_scored_on_validation(swept):
    folder, study, _ = swept
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 1 in {t.number for t in complete}
    for t in complete:
        run = folder / "runs" / STUDY / f"trial-{t.number}"
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        assert recipe["name"] == f"{STUDY}-trial-{t.number}" and recipe["train"]["epochs"] == 4
        assert recipe["train"]["lr"] == t.params["train.lr"]
        assert recipe["model"]["widths"] == json.loads(t.params["model.widths"])
        val = [json.loads(line)["val_acc"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert t.value == max(val) and t.intermediate_values == dict(enumerate(val, start=1))
        assert not (run / "summary.json").exists()         # no test evaluation


def test_the_sweep_never_reads_the_test_split(swept):
    _, _, splits_read = swept
    assert "train" in splits_read and "val" in splits_read and "test" not in splits_read


def test_report_table_plots_and_best_recipe_retrains_to_the_same_accuracy(swept, fake_cifar, tmp_path, monkeypatch):
    folder, study, _ = swept
    monkeypatch.chdir(folder)
    assert main(["sweep", "--report", STUDY]) == 0
    out = folder / "runs" / STUDY / "report"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == list(range(6))
    assert rows[0]["pruned_reason"] == "over budget" and rows[2]["pruned_reason"] == "pruner"
    assert {"param:train.lr", "param:model.widths", "params_count", "seconds"} <= set(rows[0])
    report = json.loads((out / "trials.json").read_text())
    best = study.best_trial
    assert report["best"]["trial"] == best.number and report["best"]["val_acc"] == best.value
    for name in ("history.png", "intermediate.png", "importance.png", "parallel.png"):
        assert report["plots"][name] == "written"
        with Image.open(out / name) as im:
            im.verify()
    recipe = load_recipe(str(out / "best.yaml"))
    assert recipe.name == f"{STUDY}-best"
    summary = train_run(recipe, tmp_path / "retrained", data_dir=fake_cifar, evaluate=False, device="cpu")
    assert summary["best_val_acc"] == best.value


def test_a_second_worker_with_another_space_is_refused(swept, fake_cifar, monkeypatch, capsys):
    folder, _, _ = swept
    monkeypatch.chdir(folder)
    (folder / "other.yaml").write_text("trial: {epochs: 2}\nparams:\n  train.lr: {type: float, low: 0.01, high: 0.1}\n")
    rc = main(["sweep", "--recipe", "tiny.yaml", "--space", "other.yaml", "--trials", "8", "--study", STUDY,
               "--data-dir", str(fake_cifar)])
    err = capsys.readouterr().err
    assert rc == 5 and err.startswith("cifarkit: error: study tiny-s") and "another space" in err
    assert len(optuna.load_study(study_name=STUDY, storage=f"sqlite:///runs/{STUDY}/study.db").trials) == 6
