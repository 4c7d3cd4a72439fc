"""`cifarkit evaluate`: every trained model of a run on the test set, once, plus plots and summary.json.

Selection happens on the validation split: each set of weights (final, best, EMA, SWA) and the
recipe's ensemble is scored there, and the winner is the run's headline model. The test set is
only used to report, never to choose.

Right after training (`cifarkit train`) the experiment and the trained models are passed in, so
nothing is read from disk again; `cifarkit evaluate RUN` loads them from the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from cifarkit.errors import CheckpointError
from cifarkit.evaluate.loading import load_trained
from cifarkit.evaluate.metrics import accuracy, evaluation_summary, roc_curves
from cifarkit.evaluate.plots import plot_confusion_matrix, plot_roc_curves, plot_training_curves
from cifarkit.evaluate.predictions import save_predictions
from cifarkit.experiment import Experiment
from cifarkit.fsio import write_json
from cifarkit.models.registry import count_parameters
from cifarkit.rundir import RunDir
from cifarkit.runinfo import run_record


def evaluate_run(run_dir: str | Path, data_dir=None, *, tta: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = print, experiment: Experiment | None = None,
                 models: dict[str, nn.Module] | None = None, locked: bool = False) -> dict:
    """Score every trained model of the run, write summary.json and the plots; returns the summary.

    `experiment` (with its data loaded) and `models` (weights kind -> model on the device) reuse
    what the caller already has in memory; `locked` says the caller holds the run's lock.
    """
    run = RunDir(run_dir)
    recipe = run.load_recipe()
    if locked:
        return _evaluate(run, recipe, data_dir, tta, device, log, experiment, models or {})
    with run.lock():
        return _evaluate(run, recipe, data_dir, tta, device, log, experiment, models or {})


def _evaluate(run: RunDir, recipe, data_dir, tta, device, log, experiment, models) -> dict:
    kinds = run.available_weights()
    if not kinds:
        raise CheckpointError(f"{run.root} has no trained weights yet; finish (or resume) training first")
    experiment = experiment or Experiment(recipe, device=device, log=log)
    mode = tta or recipe.eval.tta
    start = time.perf_counter()
    data = experiment.load_data(data_dir)
    has_val = experiment.eval_loader("val") is not None
    val_labels = data.arrays.train_labels[data.val_idx]
    test_labels = data.arrays.test_labels

    def probs(model, split, view_mode):
        return experiment.predict(model, split, tta=view_mode).numpy()

    results, val_probs, test_probs = {}, {}, {}
    n_params = None
    for kind in kinds:
        model = models.get(kind) or load_trained(run.root, kind, experiment.device).model
        n_params = n_params or count_parameters(model)
        entry = {}
        if has_val:
            val_probs[kind] = probs(model, "val", mode)
            entry["val_accuracy"] = accuracy(val_probs[kind], val_labels)
        test_probs[kind] = probs(model, "test", mode)
        entry["test"] = evaluation_summary(test_probs[kind], test_labels, data.classes)
        if mode != "none":
            entry["test_accuracy_no_tta"] = accuracy(probs(model, "test", "none"), test_labels)
        results[kind] = entry
        log(f"{kind:>8}: test accuracy {entry['test']['accuracy']:.4f}"
            + (f" (val {entry['val_accuracy']:.4f})" if "val_accuracy" in entry else "") + f"  [tta {mode}]")

    members = [k for k in recipe.eval.ensemble if k in test_probs]
    if len(members) >= 2:
        entry = {"members": members}
        if has_val:
            val_probs["ensemble"] = np.mean([val_probs[k] for k in members], axis=0)
            entry["val_accuracy"] = accuracy(val_probs["ensemble"], val_labels)
        test_probs["ensemble"] = np.mean([test_probs[k] for k in members], axis=0)
        entry["test"] = evaluation_summary(test_probs["ensemble"], test_labels, data.classes)
        results["ensemble"] = entry
        log(f"ensemble of {'+'.join(members)}: test accuracy {entry['test']['accuracy']:.4f}")

    selected = select(results, recipe.eval.select)
    write_plots(run, results, test_probs, test_labels, data.classes)
    headline = results[selected]["test"]["accuracy"]
    summary = {
        "run": str(run.root), "recipe": recipe.name, "seed": recipe.seed, "dataset": recipe.data.dataset,
        "tta": mode, "selected": selected,
        "selected_by": _selected_by(recipe.eval.select, selected, has_val),
        "test_accuracy": headline, "parameters": n_params,
        "accuracy_per_million_parameters": headline / (n_params / 1e6),
        "models": results, "train": run.read_run_info().get("train"),
        "eval_seconds": round(time.perf_counter() - start, 3),
        **run_record(experiment.device),
    }
    write_json(run.summary, summary)
    save_predictions(run.root, selected, test_probs[selected], test_labels, data.arrays.test_images, data.classes)
    log(f"selected '{selected}' ({summary['selected_by']}): test accuracy {headline:.4f}; wrote {run.summary}")
    return summary


def select(models: dict, rule: str = "validation") -> str:
    """The model the recipe fixes (`eval.select`), when it was trained; else the one with the best
    validation accuracy (the ensemble wins ties); without a validation split the recipe's ensemble
    when there is one, else the final weights."""
    if rule != "validation" and rule in models:
        return rule
    scored = {k: v["val_accuracy"] for k, v in models.items() if "val_accuracy" in v}
    if scored:
        return max(scored, key=lambda k: (scored[k], k == "ensemble"))
    return "ensemble" if "ensemble" in models else "final"


def _selected_by(rule: str, selected: str, has_val: bool) -> str:
    if rule == selected:
        return "recipe (eval.select)"
    return "validation accuracy" if has_val else "recipe (no validation split)"


def write_plots(run: RunDir, models: dict, test_probs: dict, labels: np.ndarray, classes: list[str]) -> None:
    records = run.read_metrics()
    if records:
        plot_training_curves(records, run.plots / "training_curves.png")
    for kind, probs in test_probs.items():
        cm = np.asarray(models[kind]["test"]["confusion_matrix"])
        plot_confusion_matrix(cm, classes, run.plots / f"confusion_{kind}.png", title=f"{kind} (test)")
        plot_roc_curves(roc_curves(probs, labels, len(classes)), classes, run.plots / f"roc_{kind}.png",
                        title=f"{kind} (test)")
