"""`cifarkit report`: the page's content, its PNG and CSV files, and runs with parts missing."""

from __future__ import annotations

import base64
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifarkit.cli import main
from cifarkit.evaluate.metrics import roc_curves
from cifarkit.evaluate.plots import merge_by_epoch
from cifarkit.evaluate.predictions import load_predictions, save_predictions
from cifarkit.evaluate.report_data import flatten
from cifarkit.fsio import read_jsonl
from report_runs import StrictPage, trained_run

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "benchmarks" / "results" / "fast94-cpu-C-train"   # evaluated before predictions.npz existed

RUN_SECTIONS = ("curves", "models", "confusion", "per-class", "roc", "wrong", "environment")


@pytest.fixture(scope="module")
def se_run(fake_cifar, tmp_path_factory):
    return trained_run("se", fake_cifar, tmp_path_factory)


@pytest.fixture(scope="module")
def fast_run(fake_cifar, tmp_path_factory):
    return trained_run("fast", fake_cifar, tmp_path_factory)


def read_csv(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def num(text: str):
    return None if text == "" else float(text)


def page(path) -> tuple[str, StrictPage]:
    text = Path(path).read_text(encoding="utf-8")
    return text, StrictPage(text)


def test_train_writes_a_self_contained_report_into_the_run(se_run):
    text, parsed = page(se_run / "report.html")
    assert parsed.scripts == 0 and "<style>" in text
    assert parsed.imgs and all(src.startswith("data:image/png;base64,") for src in parsed.imgs)
    assert not [h for h in parsed.hrefs if "//" in h]            # nothing outside the file and its folder
    assert {"overview", "recipe", *(f"{s}-se" for s in RUN_SECTIONS)} <= set(parsed.ids)
    files = se_run / "report_files"
    pngs = sorted(files.rglob("*.png"))
    assert [p.name for p in pngs] == ["confusion_matrix.png", "most_confidently_wrong.png", "roc_curves.png",
                                      "training_curves.png"]
    for png in pngs:                                              # every figure has its data beside it
        assert png.with_suffix(".csv").is_file()
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in parsed.imgs)
    assert embedded == sorted(p.read_bytes() for p in pngs)
    summary = json.loads((se_run / "summary.json").read_text())
    assert f"<strong>{summary['test_accuracy']:.4f}</strong>" in text
    assert not list(se_run.rglob(".*.tmp"))


def test_the_csvs_hold_the_numbers_of_summary_and_metrics(se_run):
    summary = json.loads((se_run / "summary.json").read_text())
    folder = se_run / "report_files" / "se"
    selected = summary["selected"]
    test = summary["models"][selected]["test"]

    header, rows = read_csv(folder / "per_class.csv")
    assert header == ["class", "precision", "recall", "f1", "support", "auc"]
    for row in rows[:-1]:
        m = test["report"]["classes"][row[0]]
        assert [num(v) for v in row[1:5]] == [m["precision"], m["recall"], m["f1"], m["support"]]
        assert num(row[5]) == test["per_class_auc"][row[0]]
    assert rows[-1][0] == "macro average" and num(rows[-1][5]) == test["macro_auc"]

    header, rows = read_csv(folder / "models.csv")
    assert [r[0] for r in rows] == list(summary["models"])
    for row in rows:
        entry = summary["models"][row[0]]
        assert num(row[2]) == entry.get("val_accuracy") and num(row[3]) == entry["test"]["accuracy"]
        assert num(row[4]) == entry.get("test_accuracy_no_tta")
        assert row[1] == "+".join(entry.get("members", [])) and (row[5] == "yes") == (row[0] == selected)
    assert header[3] == f"test accuracy (TTA {summary['tta']})"

    header, rows = read_csv(folder / "confusion_matrix.csv")
    assert header[1:] == test["class_names"]
    assert [[int(v) for v in r[1:]] for r in rows] == test["confusion_matrix"]

    header, rows = read_csv(folder / "training_curves.csv")
    metrics = merge_by_epoch(read_jsonl(se_run / "metrics.jsonl"))
    assert {"train_loss", "val_acc", "lr", "images_per_second"} <= set(header)
    assert len(rows) == len(metrics) == 2
    for row, record in zip(rows, metrics):
        assert {k: num(v) for k, v in zip(header, row)} == {k: record.get(k) for k in header}

    predictions = load_predictions(se_run)
    header, rows = read_csv(folder / "most_confidently_wrong.csv")
    assert [int(r[1]) for r in rows] == predictions.wrong_indices.tolist()
    for row in rows:
        p = predictions.probs[int(row[1])]
        assert row[2] == predictions.classes[predictions.labels[int(row[1])]]
        assert row[3] == predictions.classes[p.argmax()] and num(row[4]) == float(p.max())

    header, rows = read_csv(folder / "roc_curves.csv")
    roc = roc_curves(predictions.probs, predictions.labels, len(predictions.classes))
    for c, name in enumerate(predictions.classes):
        points = np.array([[num(r[1]), num(r[2])] for r in rows if r[0] == name])
        full = np.stack([roc["fpr"][c], roc["tpr"][c]], axis=1)
        assert {tuple(p) for p in points} <= {tuple(p) for p in full} and len(points) <= len(full)
        area = float(np.sum(np.diff(points[:, 0]) * (points[1:, 1] + points[:-1, 1]) / 2))
        assert area == pytest.approx(test["per_class_auc"][name], abs=1e-12)   # the same curve as summary.json's AUC

    header, rows = read_csv(folder / "environment.csv")
    env = {r[0]: r[1:] for r in rows}
    run_info = json.loads((se_run / "run.json").read_text())
    assert env["versions.torch"] == [run_info["versions"]["torch"], summary["versions"]["torch"]]
    assert env["hardware.cpu"][0] == run_info["hardware"]["cpu"]


def test_two_runs_show_what_differs_and_what_they_share(se_run, fast_run, tmp_path):
    out = tmp_path / "compare.html"
    assert main(["report", str(se_run), str(fast_run), "--out", str(out)]) == 0
    text, parsed = page(out)
    assert {"recipe-differences", "recipe-shared", "wrong-se", "wrong-fast"} <= set(parsed.ids)
    flats = [flatten(yaml.safe_load((r / "recipe.yaml").read_text())) for r in (se_run, fast_run)]
    differing = {k for k in flats[0].keys() | flats[1].keys() if flats[0].get(k) != flats[1].get(k)}
    header, rows = read_csv(tmp_path / "compare_files" / "recipe_differences.csv")
    assert header == ["key", "se", "fast"]
    assert {r[0] for r in rows} == differing and ["model.arch", "resnet", "fastnet"] in rows
    _, shared = read_csv(tmp_path / "compare_files" / "recipe_shared.csv")
    assert {r[0] for r in shared} == (flats[0].keys() | flats[1].keys()) - differing
    assert all(flats[0][k] == v for k, v in shared)
    _, overview = read_csv(tmp_path / "compare_files" / "runs.csv")
    accuracies = [json.loads((r / "summary.json").read_text())["test_accuracy"] for r in (se_run, fast_run)]
    assert [r[0] for r in overview] == ["se", "fast"] and [num(r[4]) for r in overview] == accuracies


def test_a_run_without_a_validation_split_says_how_it_chose(fast_run):
    summary = json.loads((fast_run / "summary.json").read_text())
    assert summary["selected_by"] == "recipe (no validation split)"
    text, _ = page(fast_run / "report.html")
    assert "by recipe (no validation split)" in text
    _, rows = read_csv(fast_run / "report_files" / "fast" / "models.csv")
    assert all(r[2] == "" for r in rows)


def test_a_run_evaluated_before_predictions_were_kept(se_run, tmp_path):
    old = shutil.copytree(se_run, tmp_path / "old", ignore=shutil.ignore_patterns("report*"))
    (old / "predictions.npz").unlink()
    assert main(["report", str(old), "--out", str(tmp_path / "r.html")]) == 0
    text, parsed = page(tmp_path / "r.html")
    assert "evaluated before cifarkit kept the selected model" in text
    assert "wrong-old" in parsed.ids and "roc-old" not in parsed.ids
    assert len(parsed.imgs) == 2                       # training curves and confusion matrix
    assert not (tmp_path / "r_files" / "old" / "most_confidently_wrong.png").exists()


def test_a_committed_run_from_before_the_report(tmp_path):
    assert main(["report", str(OLD_RUN), "--out", str(tmp_path / "old.html")]) == 0
    text, parsed = page(tmp_path / "old.html")
    assert "evaluated before cifarkit kept" in text and len(parsed.imgs) == 2
    summary = json.loads((OLD_RUN / "summary.json").read_text())
    _, rows = read_csv(tmp_path / "old_files" / OLD_RUN.name / "per_class.csv")
    report = summary["models"]["final"]["test"]["report"]["classes"]
    assert [num(r[3]) for r in rows[:-1]] == [report[r[0]]["f1"] for r in rows[:-1]]


def test_predictions_of_another_evaluation_are_not_shown(se_run, tmp_path):
    stale = shutil.copytree(se_run, tmp_path / "stale", ignore=shutil.ignore_patterns("report*"))
    p = load_predictions(stale)
    other = "final" if p.kind != "final" else "ema"
    save_predictions(stale, other, p.probs, p.labels, np.zeros((len(p.labels), 3, 32, 32), np.uint8), p.classes)
    assert main(["report", str(stale), "--out", str(tmp_path / "r.html")]) == 0
    text, parsed = page(tmp_path / "r.html")
    assert "does not belong to the evaluation in summary.json" in text and len(parsed.imgs) == 2


def test_a_run_without_metrics_or_evaluation(se_run, tmp_path):
    bare = shutil.copytree(se_run, tmp_path / "bare", ignore=shutil.ignore_patterns("report*"))
    (bare / "metrics.jsonl").unlink()
    (bare / "summary.json").unlink()
    assert main(["report", str(bare), "--out", str(tmp_path / "r.html")]) == 0
    text, parsed = page(tmp_path / "r.html")
    assert "no training metrics" in text and "has not been evaluated yet" in text
    assert parsed.imgs == [] and "environment-bare" in parsed.ids


def test_runs_with_one_name_get_distinct_sections(se_run, tmp_path):
    twin = shutil.copytree(se_run, tmp_path / "twin" / se_run.name, ignore=shutil.ignore_patterns("report*"))
    assert main(["report", str(se_run), str(twin), "--out", str(tmp_path / "r.html")]) == 0
    _, parsed = page(tmp_path / "r.html")
    assert {"run-se", "run-se-2"} <= set(parsed.ids)
    _, rows = read_csv(tmp_path / "r_files" / "recipe_differences.csv")
    assert rows == []


def test_bad_input_is_one_line_and_keeps_the_old_report(se_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    out.write_text("old report")
    broken = shutil.copytree(se_run, tmp_path / "broken", ignore=shutil.ignore_patterns("report*"))
    (broken / "summary.json").write_text("{ torn")
    cases = [([str(tmp_path / "missing")], 5), ([str(tmp_path)], 5), ([str(se_run), str(broken)], 4)]
    for runs, code in cases:                   # not a run directory; a torn summary.json
        assert main(["report", *runs, "--out", str(out)]) == code
    assert main(["report", str(se_run), "--out", str(tmp_path)]) == 9      # the output path is a folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("cifarkit: error: ") for line in err)
    assert "summary.json is not valid JSON" in err[2] and "is a folder" in err[3]
    assert out.read_text() == "old report"


def test_roc_corner_points_keep_the_curve_exactly():
    from cifarkit.evaluate.metrics import binary_roc
    from cifarkit.evaluate.report_data import corner_points
    rng = np.random.default_rng(0)
    positives = rng.random(5000) < 0.1
    scores = np.round(rng.random(5000) + positives, 3)          # ties as well as distinct scores
    fpr, tpr, _ = binary_roc(scores, positives)
    keep = corner_points(fpr, tpr)
    assert keep[0] == 0 and keep[-1] == len(fpr) - 1 and len(keep) < len(fpr) / 2
    for i in sorted(set(range(len(fpr))) - set(keep)):         # each dropped point lies on a kept segment
        b = np.searchsorted(keep, i)
        (ax, ay), (bx, by) = (fpr[keep[b - 1]], tpr[keep[b - 1]]), (fpr[keep[b]], tpr[keep[b]])
        assert (bx - ax) * (tpr[i] - ay) == (by - ay) * (fpr[i] - ax)
        assert min(ax, bx) <= fpr[i] <= max(ax, bx) and min(ay, by) <= tpr[i] <= max(ay, by)
