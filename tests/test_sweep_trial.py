"""One trial on its own: a combination of values that no recipe allows, and a trial whose loss
diverges, are pruned with their reason (they are outcomes of the search, not failures of the worker)."""

from __future__ import annotations

import optuna
import yaml

from cifarkit.config import recipe_from_dict, recipe_to_dict
from cifarkit.sweep.space import space_from_dict
from cifarkit.sweep.trial import TrialRunner
from sweep_fakes import TINY_RECIPE


def _run_one(tmp_path, params: dict, space: dict, data_dir=None):
    base = recipe_to_dict(recipe_from_dict(yaml.safe_load(TINY_RECIPE)))
    runner = TrialRunner(base, space_from_dict(space, base), tmp_path / "runs" / "t", "t", data_dir=data_dir,
                         device="cpu", log=lambda line: None)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    study.optimize(runner, n_trials=1)
    return study.trials[0]


def test_values_valid_alone_but_not_together_prune_the_trial_before_any_work(tmp_path):
    # each value is valid with the other at its first choice; together they are not
    space = {"trial": {"epochs": 2}, "params": {
        "train.ema_decay": {"type": "categorical", "choices": [0.9, 0.0]},
        "train.ema_keep": {"type": "categorical", "choices": ["last", "best"]}}}
    trial = _run_one(tmp_path, {"train.ema_decay": 0.0, "train.ema_keep": "best"}, space)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned_reason"] == "invalid recipe"
    assert "needs 'train.ema_decay' > 0" in trial.user_attrs["pruned_detail"]
    assert not (tmp_path / "runs").exists()


def test_a_diverging_trial_is_pruned_as_diverged(tmp_path, fake_cifar):
    space = {"trial": {"epochs": 2}, "params": {"train.lr": {"type": "float", "low": 0.01, "high": 1e12, "log": True}}}
    trial = _run_one(tmp_path, {"train.lr": 1e12}, space, data_dir=fake_cifar)
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["pruned_reason"] == "diverged"
    assert "non-finite loss or gradients" in trial.user_attrs["pruned_detail"]
