"""One sweep trial: sample a recipe, refuse it cheaply when it cannot or may not train (pruned,
with the reason), else train it into runs/<study>/trial-<n>/ on the data this worker loaded once.

The test set plays no part: right after loading, the worker drops its test images, so no trial
can score them. `cifarkit evaluate` of the best trial reads the test set, once, afterwards.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import torch

from cifarkit.config import Recipe, recipe_from_dict, recipe_to_dict
from cifarkit.errors import BudgetError, ConfigError, TrainingDiverged
from cifarkit.experiment import Experiment
from cifarkit.fsio import check_folder_writable, write_json
from cifarkit.models.registry import build_model, check_budget, count_parameters
from cifarkit.rundir import RunDir
from cifarkit.runinfo import run_record
from cifarkit.sweep.space import Space, sample, trial_recipe_dict
from cifarkit.train.callbacks.optuna_pruning import OptunaPruning
from cifarkit.train.run import command_line


class TrialRunner:
    """The objective Optuna calls: returns the trial's best per-epoch validation accuracy."""

    def __init__(self, base: dict, space: Space, study_dir: Path, study_name: str, *, data_dir=None,
                 device: str | None = None, worker: int = 0, log: Callable[[str], None] = print):
        self.worker = worker
        self.base, self.space, self.study_dir, self.study_name = base, space, Path(study_dir), study_name
        self.data_dir, self.device, self.log = data_dir, device, log
        self.experiment: Experiment | None = None     # the first trained trial's, holding the data

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self.worker)
        values = sample(trial, self.space)
        try:
            recipe = recipe_from_dict(trial_recipe_dict(self.base, self.space, values,
                                                        f"{self.study_name}-trial-{trial.number}"))
        except ConfigError as e:
            prune(trial, "invalid recipe", str(e))
        trial.set_user_attr("recipe", recipe_to_dict(recipe))
        with torch.random.fork_rng(devices=[]):       # a throwaway model must not move the seed
            model = build_model(recipe.model, recipe.data.num_classes)
        trial.set_user_attr("params_count", count_parameters(model))
        try:
            check_budget(model, recipe.budget, recipe.allow_over_budget)
        except BudgetError as e:
            prune(trial, "over budget", str(e))    # before any data is read: it costs nothing
        run_dir = self.study_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            summary = train_trial(self._experiment(recipe), run_dir, trial)
        except TrainingDiverged as e:
            prune(trial, "diverged", str(e))
        trial.set_user_attr("epochs_run", summary["epochs_run"])
        trial.set_user_attr("train_seconds", summary["train_seconds"])
        if summary["best_val_acc"] is None:
            raise ConfigError(f"trial {trial.number} has no validation accuracy; the sweep needs data.val_size > 0")
        return summary["best_val_acc"]

    def _experiment(self, recipe: Recipe) -> Experiment:
        if self.experiment is None:
            experiment = Experiment(recipe, device=self.device, log=self.log)
            drop_test_split(experiment.load_data(self.data_dir))
            self.experiment = experiment
            return experiment
        return self.experiment.with_recipe(recipe)


def drop_test_split(data) -> None:
    """Forget the test images and labels of loaded data (a sweep selects; it never tests)."""
    arrays = data.arrays
    data.arrays = dataclasses.replace(arrays, test_images=np.empty((0, *arrays.test_images.shape[1:]), np.uint8),
                                      test_labels=np.empty((0,), np.int64))


def prune(trial: optuna.Trial, reason: str, detail: str):
    trial.set_user_attr("pruned_reason", reason)
    trial.set_user_attr("pruned_detail", detail[:500])
    raise optuna.TrialPruned(f"{reason}: {detail}")


def train_trial(experiment: Experiment, run_dir: Path, trial: optuna.Trial) -> dict:
    """`train_run` without the test evaluation, on an experiment whose data is loaded, with the
    pruning callback last (after the epoch's checkpoint). A pruned trial leaves a resumable run."""
    run = RunDir(run_dir)
    with run.lock():
        run.check_new()
        check_folder_writable(run.root)
        trainer = experiment.build_trainer(run, progress=False)
        trainer.callbacks.append(OptunaPruning(trial))
        run.create(experiment.recipe)
        record = run_record(experiment.device, command=command_line(sys.argv),
                            data_source=experiment.data.arrays.source, seed=experiment.recipe.seed,
                            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        record["sweep"] = {"study": trial.study.study_name, "trial": trial.number}
        write_json(run.run_json, record)
        try:
            summary = trainer.fit()
        except optuna.TrialPruned as e:
            st = trainer.state
            trial.set_user_attr("pruned_reason", "pruner")
            trial.set_user_attr("pruned_detail", str(e))
            trial.set_user_attr("epochs_run", st.epoch)
            trial.set_user_attr("train_seconds", round(st.train_seconds, 3))
            write_json(run.run_json, {**record, "sweep": {**record["sweep"], "pruned": str(e)},
                                      "train": {"epochs_run": st.epoch, "steps": st.step,
                                                "train_seconds": round(st.train_seconds, 3)}})
            raise
        write_json(run.run_json, {**record, "train": summary})
    return summary


__all__ = ["TrialRunner", "train_trial", "drop_test_split", "prune"]
