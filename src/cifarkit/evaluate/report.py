"""`cifarkit evaluate`: every trained model of a run on the test set, once, plus plots and summary.json.

Selection happens on the validation split: each set of weights (final, best, EMA, SWA) and the
recipe's ensemble is scored there, and the winner is the run's headline model. The test set is
only used to report, never to choose.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cifarkit.config import Recipe
from cifarkit.data.prepare import make_loader, prepare_data
from cifarkit.errors import CheckpointError
from cifarkit.evaluate.loading import load_trained
from cifarkit.evaluate.metrics import accuracy, evaluation_summary, roc_curves
from cifarkit.evaluate.plots import plot_confusion_matrix, plot_roc_curves, plot_training_curves
from cifarkit.evaluate.predictions import save_predictions
from cifarkit.evaluate.tta import predict_probs
from cifarkit.fsio import write_json
from cifarkit.models.registry import count_parameters
from cifarkit.rundir import RunDir
from cifarkit.runinfo import resolve_device, run_record


def autocast_dtype(recipe: Recipe, device: torch.device):
    if recipe.train.precision == "bf16":
        return torch.bfloat16
    if recipe.train.precision == "fp16" and device.type == "cuda":
        return torch.float16
    return None


def evaluate_run(run_dir: str | Path, data_dir=None, *, tta: str | None = None, device: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    run = RunDir(run_dir)
    recipe = run.load_recipe()
    kinds = run.available_weights()
    if not kinds:
        raise CheckpointError(f"{run.root} has no trained weights yet; finish (or resume) training first")
    device = resolve_device(device or recipe.device)
    mode = tta or recipe.eval.tta
    start = time.perf_counter()
    data = prepare_data(recipe.data, data_dir, log=log)
    arrays = data.arrays
    loader_args = dict(recipe=recipe, device=device, mean=data.mean, std=data.std, train=False)
    val_loader = (make_loader(arrays.train_images[data.val_idx], arrays.train_labels[data.val_idx], **loader_args)
                  if len(data.val_idx) else None)
    test_loader = make_loader(arrays.test_images, arrays.test_labels, **loader_args)
    val_labels = arrays.train_labels[data.val_idx]
    amp = autocast_dtype(recipe, device)

    def probs(model, loader, view_mode):
        return predict_probs(model, loader, mode=view_mode, device=device, autocast_dtype=amp,
                             batch_size=recipe.eval.batch_size, fraction=recipe.eval.tta_fraction).cpu().numpy()

    models, val_probs, test_probs = {}, {}, {}
    n_params = None
    for kind in kinds:
        trained = load_trained(run.root, kind, device)
        n_params = n_params or count_parameters(trained.model)
        entry = {}
        if val_loader is not None:
            val_probs[kind] = probs(trained.model, val_loader, mode)
            entry["val_accuracy"] = accuracy(val_probs[kind], val_labels)
        test_probs[kind] = probs(trained.model, test_loader, mode)
        entry["test"] = evaluation_summary(test_probs[kind], arrays.test_labels, data.classes)
        if mode != "none":
            entry["test_accuracy_no_tta"] = accuracy(probs(trained.model, test_loader, "none"), arrays.test_labels)
        models[kind] = entry
        log(f"{kind:>8}: test accuracy {entry['test']['accuracy']:.4f}"
            + (f" (val {entry['val_accuracy']:.4f})" if "val_accuracy" in entry else "") + f"  [tta {mode}]")

    members = [k for k in recipe.eval.ensemble if k in test_probs]
    if len(members) >= 2:
        entry = {"members": members}
        if val_loader is not None:
            val_probs["ensemble"] = np.mean([val_probs[k] for k in members], axis=0)
            entry["val_accuracy"] = accuracy(val_probs["ensemble"], val_labels)
        test_probs["ensemble"] = np.mean([test_probs[k] for k in members], axis=0)
        entry["test"] = evaluation_summary(test_probs["ensemble"], arrays.test_labels, data.classes)
        models["ensemble"] = entry
        log(f"ensemble of {'+'.join(members)}: test accuracy {entry['test']['accuracy']:.4f}")

    selected = _select(models, recipe)
    write_plots(run, models, test_probs, arrays.test_labels, data.classes)
    headline = models[selected]["test"]["accuracy"]
    train_info = json.loads(run.run_json.read_text()).get("train") if run.run_json.is_file() else None
    summary = {
        "run": str(run.root), "recipe": recipe.name, "seed": recipe.seed, "dataset": recipe.data.dataset,
        "tta": mode, "selected": selected,
        "selected_by": "validation accuracy" if val_loader is not None else "recipe (no validation split)",
        "test_accuracy": headline, "parameters": n_params,
        "accuracy_per_million_parameters": headline / (n_params / 1e6),
        "models": models, "train": train_info, "eval_seconds": round(time.perf_counter() - start, 3),
        **run_record(device),
    }
    write_json(run.summary, summary)
    save_predictions(run.root, selected, test_probs[selected], arrays.test_labels, arrays.test_images, data.classes)
    log(f"selected '{selected}' ({summary['selected_by']}): test accuracy {headline:.4f}; wrote {run.summary}")
    return summary


def _select(models: dict, recipe: Recipe) -> str:
    scored = {k: v["val_accuracy"] for k, v in models.items() if "val_accuracy" in v}
    if scored:
        return max(scored, key=lambda k: (scored[k], k == "ensemble"))
    return "ensemble" if "ensemble" in models else "final"


def write_plots(run: RunDir, models: dict, test_probs: dict, labels: np.ndarray, classes: list[str]) -> None:
    records = run.read_metrics()
    if records:
        plot_training_curves(records, run.plots / "training_curves.png")
    for kind, probs in test_probs.items():
        cm = np.asarray(models[kind]["test"]["confusion_matrix"])
        plot_confusion_matrix(cm, classes, run.plots / f"confusion_{kind}.png", title=f"{kind} (test)")
        plot_roc_curves(roc_curves(probs, labels, len(classes)), classes, run.plots / f"roc_{kind}.png",
                        title=f"{kind} (test)")
