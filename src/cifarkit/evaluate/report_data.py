"""What the HTML report shows, read from run directories and laid out as tables.

A table is (header, rows); the same table becomes an HTML table and a CSV file, so the CSV next
to the report holds exactly the numbers on the page (at full precision: summary.json's floats,
metrics.jsonl's values). Nothing here draws or writes; see html_report.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from cifarkit.errors import CheckpointError, DataError
from cifarkit.evaluate.plots import TRAINING_PANELS, merge_by_epoch
from cifarkit.evaluate.predictions import PREDICTIONS_FILE, Predictions, load_predictions
from cifarkit.rundir import RunDir

Table = tuple[list[str], list[list]]


@dataclass
class RunData:
    root: Path
    label: str                           # unique among the report's runs, safe as a folder name
    recipe: dict                         # the resolved recipe, nested, as in recipe.yaml
    summary: dict | None                 # summary.json, None before `cifarkit evaluate`
    metrics: list[dict]                  # metrics.jsonl, one merged record per epoch
    run_info: dict | None                # run.json
    predictions: Predictions | None      # predictions.npz when it fits summary.json
    notes: dict[str, str] = field(default_factory=dict)   # section -> why it is left out


def load_run(path, label: str) -> RunData:
    """Everything the report needs from one run directory; missing parts become notes, not errors."""
    run = RunDir(path)
    if not run.root.is_dir() or not run.exists():
        raise CheckpointError(f"{run.root} is not a cifarkit run directory (no recipe.yaml)")
    try:
        recipe = yaml.safe_load(run.recipe_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise DataError(f"{run.recipe_path} is not valid YAML") from None
    if not isinstance(recipe, dict):
        raise DataError(f"{run.recipe_path} does not hold a recipe")
    data = RunData(run.root, label, recipe, run.read_summary(missing_ok=True), merge_by_epoch(run.read_metrics()),
                   run.read_run_info() or None, None)
    if data.summary is None:
        data.notes["evaluation"] = (f"This run has not been evaluated yet (no summary.json): "
                                    f"`cifarkit evaluate {run.root}` adds the test results.")
    if not data.metrics:
        data.notes["curves"] = "This run has no training metrics (metrics.jsonl is missing or empty)."
    data.predictions, note = _matching_predictions(run.root, data.summary)
    if note:
        data.notes["predictions"] = note
    return data


def _matching_predictions(root: Path, summary: dict | None) -> tuple[Predictions | None, str | None]:
    if summary is None:
        return None, "Without an evaluation there are no test predictions to show."
    predictions = load_predictions(root)
    if predictions is None:
        return None, (f"This run was evaluated before cifarkit kept the selected model's test predictions "
                      f"({PREDICTIONS_FILE}), so the images it gets most confidently wrong and its ROC curves "
                      f"are left out; `cifarkit evaluate {root}` writes them.")
    selected = summary.get("selected")
    test = (summary.get("models", {}).get(selected) or {}).get("test", {})
    accuracy = float(np.mean(predictions.probs.argmax(1) == predictions.labels))
    if (predictions.kind != selected or len(predictions.labels) != test.get("num_samples")
            or abs(accuracy - test.get("accuracy", -1)) > 0.5 / len(predictions.labels)):
        return None, (f"{PREDICTIONS_FILE} does not belong to the evaluation in summary.json (another model or "
                      f"test set), so it is not shown; `cifarkit evaluate {root}` writes both again.")
    return predictions, None


def unique_labels(paths) -> list[str]:
    """Folder-safe names for the runs, from their directory names, numbered where two coincide."""
    labels, seen = [], {}
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).resolve().name).strip("._") or "run"
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return labels


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------

def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> values as text (lists and null as JSON), in the recipe's own order."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, dict)) or value is None or isinstance(value, bool):
            flat[f"{prefix}{key}"] = json.dumps(value)
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def compare_recipes(runs: list[RunData]) -> tuple[Table, Table]:
    """(what differs: key + one column per run, what all share: key + value)."""
    flats = [flatten(r.recipe) for r in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    differ, shared = [], []
    for key in keys:
        values = [flat.get(key, "(absent)") for flat in flats]
        if len(set(values)) == 1:
            shared.append([key, values[0]])
        else:
            differ.append([key, *values])
    return (["key", *[r.label for r in runs]], differ), (["key", "value"], shared)


# ---------------------------------------------------------------------------------------------
# Tables of one run
# ---------------------------------------------------------------------------------------------

def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def curves_table(metrics: list[dict]) -> Table:
    """One row per epoch: the plotted metrics first, then any other number metrics.jsonl holds."""
    plotted = [k for _, keys in TRAINING_PANELS for k in keys]
    others = sorted({k for r in metrics for k, v in r.items() if _number(v) is not None} - set(plotted) - {"epoch"})
    columns = [k for k in plotted if any(k in r for r in metrics)] + others
    return ["epoch", *columns], [[r["epoch"], *[_number(r.get(k)) for k in columns]] for r in metrics]


def models_table(summary: dict) -> Table:
    """Every model of summary.json: validation and test accuracy, with and without TTA."""
    rows = []
    for kind, entry in summary.get("models", {}).items():
        rows.append([kind, "+".join(entry.get("members", [])), entry.get("val_accuracy"),
                     entry.get("test", {}).get("accuracy"), entry.get("test_accuracy_no_tta"),
                     "yes" if kind == summary.get("selected") else ""])
    tta = summary.get("tta", "none")
    return (["model", "ensemble of", "validation accuracy", f"test accuracy (TTA {tta})",
             "test accuracy without TTA", "selected"], rows)


def selected_test(summary: dict) -> dict:
    return summary.get("models", {}).get(summary.get("selected"), {}).get("test", {})


def per_class_table(summary: dict) -> Table:
    """Precision, recall, F1, support and one-vs-rest AUC per class of the selected model."""
    test = selected_test(summary)
    report, auc = test.get("report", {}), test.get("per_class_auc", {})
    rows = [[name, m["precision"], m["recall"], m["f1"], m["support"], auc.get(name)]
            for name, m in report.get("classes", {}).items()]
    if report.get("macro_avg"):
        m = report["macro_avg"]
        rows.append(["macro average", m["precision"], m["recall"], m["f1"], m["support"], test.get("macro_auc")])
    return ["class", "precision", "recall", "f1", "support", "auc"], rows


def confusion_table(summary: dict) -> Table:
    test = selected_test(summary)
    names = test.get("class_names", [])
    return ["true \\ predicted", *names], [[name, *row] for name, row in zip(names, test.get("confusion_matrix", []))]


def _flat_record(record: dict | None, keys=("versions", "hardware", "git_commit", "command", "data_source",
                                          "started", "train", "eval_seconds")) -> dict[str, str]:
    record = record or {}
    return flatten({k: record[k] for k in keys if k in record})


def environment_table(run_info: dict | None, summary: dict | None) -> Table:
    """Versions and hardware of training (run.json) beside those of the evaluation (summary.json)."""
    train, evaluation = _flat_record(run_info), _flat_record(summary, ("versions", "hardware", "git_commit",
                                                                       "eval_seconds"))
    keys = list(dict.fromkeys([*train, *evaluation]))
    return (["key", "training (run.json)", "evaluation (summary.json)"],
            [[k, train.get(k, ""), evaluation.get(k, "")] for k in keys])


def wrong_table(predictions: Predictions) -> Table:
    rows = []
    for rank, index in enumerate(predictions.wrong_indices, start=1):
        p = predictions.probs[index]
        predicted = int(p.argmax())
        rows.append([rank, int(index), predictions.classes[predictions.labels[index]],
                     predictions.classes[predicted], float(p[predicted]),
                     float(p[predictions.labels[index]])])
    return ["rank", "test index", "true class", "predicted class", "confidence", "probability of the true class"], rows


def corner_points(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Indices of the points where an ROC curve turns: the others lie on a straight vertical or
    horizontal run between two kept points, so the curve and its area stay exactly the same
    (sklearn's drop_intermediate). Without this, 10,000 test images give ~10,000 points a class."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    if len(fpr) <= 2:
        return np.arange(len(fpr))
    straight = ((fpr[:-2] == fpr[1:-1]) & (fpr[1:-1] == fpr[2:])) | ((tpr[:-2] == tpr[1:-1]) & (tpr[1:-1] == tpr[2:]))
    return np.flatnonzero(np.r_[True, ~straight, True])


def roc_table(roc: dict, classes: list[str]) -> Table:
    rows = []
    for name, fpr, tpr in zip(classes, roc["fpr"], roc["tpr"]):
        keep = corner_points(fpr, tpr)
        rows += [[name, float(f), float(t)] for f, t in zip(fpr[keep], tpr[keep])]
    return ["class", "false positive rate", "true positive rate"], rows


def overview_table(runs: list[RunData]) -> Table:
    rows = []
    for r in runs:
        s = r.summary or {}
        rows.append([r.label, r.recipe.get("name"), r.recipe.get("seed"), s.get("selected"), s.get("test_accuracy"),
                     s.get("parameters"), ((r.run_info or {}).get("train") or {}).get("train_seconds")])
    return ["run", "recipe", "seed", "selected model", "test accuracy", "parameters", "training seconds"], rows
