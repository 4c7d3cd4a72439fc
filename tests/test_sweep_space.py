"""SPACE.yaml: parsing, validation before any work, and what a trial's sampled values become; the
sampler, pruner and pruning callback the sweep builds from it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial

from cifarkit.cli import main
from cifarkit.config import load_recipe, recipe_from_dict, recipe_to_dict
from cifarkit.errors import ConfigError
from cifarkit.sweep.space import load_space, sample, space_from_dict, trial_recipe_dict
from cifarkit.sweep.study import build_pruner, build_sampler
from cifarkit.train.callbacks.optuna_pruning import OptunaPruning
from sweep_fakes import TINY_RECIPE, TINY_SPACE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base():
    return recipe_to_dict(recipe_from_dict(yaml.safe_load(TINY_RECIPE)))


def space(base, params: dict, **sections):
    return space_from_dict({"trial": {"val_size": 100}, **sections, "params": params}, base)


def test_the_example_space_of_the_measured_sweep_is_valid():
    fast94 = recipe_to_dict(load_recipe("fast94"))
    s = load_space(ROOT / "benchmarks" / "sweeps" / "fast94-cpu.yaml", fast94)
    assert s.trial.overrides() == {"train.epochs": 4, "data.train_subset": 10000, "data.val_size": 5000}
    assert s.params["train.muon_lr"].log and s.params["model.widths"].per_stage == [64, 256, 256]
    widest = sample(FixedTrial({"train.muon_lr": 0.2, "train.lr": 1.0, "train.weight_decay": 0.002,
                                "train.label_smoothing": 0.1, "augment.crop_padding": 2, "model.widths": 1.75}), s)
    assert widest["model.widths"] == [112, 448, 448]


def test_per_stage_multiplier_stages_and_list_choices_become_recipe_lists(base):
    s = space(base, {
        "model.widths": {"type": "float", "low": 0.5, "high": 2.0, "step": 0.25, "per_stage": [8, 16], "multiple_of": 4},
        "model.blocks": {"type": "int", "low": 1, "high": 3, "stages": 2},
        "model.attention": {"type": "categorical", "choices": ["none", "se"]},
    })
    values = sample(FixedTrial({"model.widths": 1.25, "model.blocks[0]": 3, "model.blocks[1]": 1,
                                "model.attention": "se"}), s)
    assert values == {"model.widths": [12, 20], "model.blocks": [3, 1], "model.attention": "se"}
    s = space(base, {"model.widths": {"type": "categorical", "choices": [[8, 16], [12, 24]]}})
    assert sample(FixedTrial({"model.widths": "[12, 24]"}), s) == {"model.widths": [12, 24]}
    # through a real study: Optuna sees the list as its JSON text, the recipe gets the list
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = {tuple(sample(study.ask(), s)["model.widths"]) for _ in range(12)}
    assert drawn == {(8, 16), (12, 24)}


def test_trial_recipe_gets_the_fixed_settings_the_values_and_its_name(base):
    s = space(base, {"train.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
              trial={"epochs": 2, "train_subset": 300, "val_size": 50})
    recipe = recipe_from_dict(trial_recipe_dict(base, s, {"train.lr": 0.05}, "st-trial-3"))
    assert (recipe.name, recipe.train.epochs, recipe.train.lr) == ("st-trial-3", 2, 0.05)
    assert (recipe.data.train_subset, recipe.data.val_size) == (300, 50)


@pytest.mark.parametrize("params, sections, message", [
    ({"train.lrr": {"type": "float", "low": 0.1, "high": 1}}, {}, "unknown key 'params.train.lrr'; did you mean 'params.train.lr'?"),
    ({"train.lr": {"type": "float", "low": 0.1, "hihg": 1}}, {}, "did you mean 'params.train.lr.high'?"),
    ({"train.lr": {"type": "float", "low": "a", "high": 1}}, {}, "'params.train.lr.low' must be a number"),
    ({"train.lr": {"type": "flaot", "low": 0.1, "high": 1}}, {}, "'params.train.lr.type' must be one of"),
    ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, {}, "a log scale needs 'low' > 0"),
    ({"train.lr": {"type": "float", "low": 2, "high": 1}}, {}, "'low' must be <= 'high'"),
    ({"train.epochs": {"type": "int", "low": 1, "high": 2.5}}, {}, "must be integers"),
    ({"model.attention": {"type": "categorical", "choices": []}}, {}, "non-empty 'choices'"),
    ({"model.attention": {"type": "categorical", "choices": ["none", "sqeeze"]}}, {},
     "model.attention = 'sqeeze' does not make a valid recipe"),
    ({"train.lr": {"type": "float", "low": -1, "high": 1}}, {}, "train.lr = -1.0 does not make a valid recipe"),
    ({"data.train_subset": {"type": "int", "low": 100, "high": 200}}, {}, "the data section is fixed for a study"),
    ({"name": {"type": "categorical", "choices": ["a"]}}, {}, "unknown key 'params.name'"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 1}}, {"pruners": {}}, "did you mean 'pruner'?"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 1}}, {"pruner": {"name": "asha"}}, "'pruner.name' must be one of"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 1}}, {"trial": {"val_size": 0}}, "the objective is validation accuracy"),
])
def test_bad_spaces_fail_before_any_work_naming_the_key(base, params, sections, message):
    data = {"trial": {"val_size": 100}, **sections, "params": params}
    with pytest.raises(ConfigError) as err:
        space_from_dict(data, base)
    assert message in str(err.value)


def test_a_bad_space_is_one_line_from_the_cli_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    (tmp_path / "space.yaml").write_text(TINY_SPACE.replace("train.lr:", "train.lrr:"))
    rc = main(["sweep", "--recipe", "tiny.yaml", "--space", "space.yaml", "--trials", "2",
               "--data-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert rc == ConfigError.exit_code and err.count("\n") == 1
    assert err.startswith("cifarkit: error: space space.yaml: unknown key 'params.train.lrr'")
    assert not (tmp_path / "runs").exists()


def test_a_sweep_without_space_or_trials_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--recipe", "fast94"])
    assert exit_.value.code == 2 and "needs --space and --trials" in capsys.readouterr().err


def test_sampler_and_pruner_follow_the_space(base):
    s = space(base, {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}},
              sampler={"name": "random", "seed": 3}, pruner={"name": "hyperband", "min_resource": 1, "reduction_factor": 2})
    assert isinstance(build_sampler(s, worker=0), optuna.samplers.RandomSampler)
    pruner = build_pruner(s, epochs=8)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._max_resource == 8
    # workers of one study draw different values (their seeds differ by the worker index)
    draws = [build_sampler(s, worker=w).sample_independent(
        None, None, "x", optuna.distributions.FloatDistribution(0, 1)) for w in (0, 1, 0)]
    assert draws[0] == draws[2] != draws[1]
    s = space(base, {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}})
    assert isinstance(build_sampler(s, 0), optuna.samplers.TPESampler)
    assert isinstance(build_pruner(s, 4), optuna.pruners.MedianPruner)
    s = space(base, {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}}, pruner={"name": "none"})
    assert isinstance(build_pruner(s, 4), optuna.pruners.NopPruner)


class _Trial:
    def __init__(self, prune: bool):
        self.reports, self.prune = [], prune

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune


def test_pruning_callback_reports_each_epoch_and_stops_when_told():
    keep = _Trial(prune=False)
    callback = OptunaPruning(keep)
    callback.on_epoch_end(None, 0, {"val_acc": 0.4})
    callback.on_epoch_end(None, 1, {"val_acc": 0.5})
    callback.on_epoch_end(None, 2, {"train_acc": 0.9})          # no validation: nothing to report
    assert keep.reports == [(1, 0.4), (2, 0.5)]
    stop = OptunaPruning(_Trial(prune=True))
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 3 \\(val_acc 0.2500\\)"):
        stop.on_epoch_end(None, 2, {"val_acc": 0.25})


def test_median_pruner_never_prunes_in_the_warmup_epochs(base):
    """Steps are 1-based epochs: warmup_epochs 1 protects epoch 1, and a weak trial goes at epoch 2."""
    s = space(base, {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}},
              pruner={"name": "median", "n_startup_trials": 1, "warmup_epochs": 1})
    study = optuna.create_study(direction="maximize", pruner=build_pruner(s, epochs=4))
    strong = study.ask()
    for epoch in (1, 2):
        strong.report(0.9, step=epoch)
    study.tell(strong, 0.9)
    weak = study.ask()
    weak.report(0.1, step=1)
    assert not weak.should_prune()
    weak.report(0.1, step=2)
    assert weak.should_prune()
