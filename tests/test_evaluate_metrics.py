"""Our numpy metrics against torchmetrics (the reference), plus edge cases and JSON output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassROC,
)

from cifarkit import CIFAR10_CLASSES
from cifarkit.errors import DataError
from cifarkit.evaluate.metrics import (
    accuracy,
    binary_roc,
    confusion_matrix,
    evaluation_summary,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_report,
    roc_curves,
    top_k_accuracy,
)

C = 10
NAMES = list(CIFAR10_CLASSES)


def random_predictions(seed: int, n: int = 600, num_classes: int = C, skill: float = 2.0):
    """Probabilities that lean towards the true class, so that metrics are far from trivial."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    logits = torch.randn(n, num_classes, generator=g) * 1.5
    logits[torch.arange(n), labels] += skill
    return logits.softmax(dim=1), labels


@pytest.fixture(params=[0, 1, 2])
def data(request):
    return random_predictions(request.param)


def test_accuracy_matches_torchmetrics(data):
    probs, labels = data
    expected = MulticlassAccuracy(num_classes=C, average="micro")(probs, labels).item()
    assert accuracy(probs, labels) == pytest.approx(expected, abs=1e-7)
    # Class indices work as well as scores, numpy as well as torch.
    assert accuracy(probs.argmax(1).numpy(), labels.numpy()) == pytest.approx(expected, abs=1e-7)
    assert 0.2 < expected < 0.9


def test_confusion_matrix_matches_torchmetrics(data):
    probs, labels = data
    preds = probs.argmax(1)
    ours = confusion_matrix(preds, labels, C)
    theirs = MulticlassConfusionMatrix(num_classes=C)(preds, labels).numpy()
    assert ours.dtype == np.int64 and ours.shape == (C, C)
    np.testing.assert_array_equal(ours, theirs)
    # Rows are true classes.
    np.testing.assert_array_equal(ours.sum(axis=1), np.bincount(labels.numpy(), minlength=C))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_confusion_matrix_matches_torchmetrics_on_any_input(pairs):
    preds = torch.tensor([p for p, _ in pairs])
    labels = torch.tensor([y for _, y in pairs])
    theirs = MulticlassConfusionMatrix(num_classes=4)(preds, labels).numpy()
    np.testing.assert_array_equal(confusion_matrix(preds, labels, 4), theirs)


def test_per_class_report_matches_torchmetrics(data):
    probs, labels = data
    preds = probs.argmax(1)
    report = per_class_report(preds, labels, NAMES)
    for key, metric in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                        ("f1", MulticlassF1Score)):
        theirs = metric(num_classes=C, average=None)(preds, labels).numpy()
        ours = np.array([report["classes"][name][key] for name in NAMES])
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
        macro = metric(num_classes=C, average="macro")(preds, labels).item()
        assert report["macro_avg"][key] == pytest.approx(macro, abs=1e-6)
    supports = [report["classes"][name]["support"] for name in NAMES]
    assert supports == np.bincount(labels.numpy(), minlength=C).tolist()
    assert report["macro_avg"]["support"] == len(labels)
    assert report["accuracy"] == pytest.approx(accuracy(preds, labels))


def test_report_of_a_class_never_predicted_nor_present():
    preds = np.array([0, 0, 1, 1])
    labels = np.array([0, 1, 1, 1])
    report = per_class_report(preds, labels, ["a", "b", "c"])
    assert report["classes"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["classes"]["a"]["precision"] == 0.5
    assert report["classes"]["b"]["recall"] == pytest.approx(2 / 3)
    assert report["accuracy"] == 0.75


def test_roc_auc_matches_torchmetrics(data):
    probs, labels = data
    roc = roc_curves(probs, labels, C)
    theirs = MulticlassAUROC(num_classes=C, average=None, thresholds=None)(probs, labels).numpy()
    np.testing.assert_allclose(roc["auc"], theirs, atol=1e-6)
    macro = MulticlassAUROC(num_classes=C, average="macro", thresholds=None)(probs, labels).item()
    assert roc["macro_auc"] == pytest.approx(macro, abs=1e-6)
    fprs, tprs, _ = MulticlassROC(num_classes=C, thresholds=None)(probs, labels)
    for c in range(C):
        np.testing.assert_allclose(roc["fpr"][c], fprs[c].numpy(), atol=1e-6)
        np.testing.assert_allclose(roc["tpr"][c], tprs[c].numpy(), atol=1e-6)
        assert roc["thresholds"][c][0] == np.inf
        assert np.all(np.diff(roc["fpr"][c]) >= 0) and np.all(np.diff(roc["tpr"][c]) >= 0)


def test_roc_with_tied_scores_matches_torchmetrics():
    probs, labels = random_predictions(7, n=300)
    coarse = torch.round(probs * 4) / 4  # many ties; rows need not sum to 1 for ROC
    roc = roc_curves(coarse, labels, C)
    theirs = MulticlassAUROC(num_classes=C, average=None, thresholds=None)(coarse, labels).numpy()
    np.testing.assert_allclose(roc["auc"], theirs, atol=1e-6)


def test_binary_roc_of_perfect_and_reversed_scores():
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    fpr, tpr, _ = binary_roc(scores, np.array([True, True, False, False]))
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1, 1])
    np.testing.assert_array_equal(fpr, [0, 0, 0, 0.5, 1])
    roc = roc_curves(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]), np.array([0, 0, 1, 1]), 2)
    assert roc["auc"] == [1.0, 1.0]


def test_auc_of_an_absent_class_is_nan_and_left_out_of_macro():
    probs, labels = random_predictions(3, n=200, num_classes=4)
    labels[labels == 3] = 0
    roc = roc_curves(probs, labels, 4)
    assert math.isnan(roc["auc"][3])
    assert roc["macro_auc"] == pytest.approx(np.mean(roc["auc"][:3]))


def test_ece_matches_torchmetrics(data):
    probs, labels = data
    for n_bins in (15, 10):
        theirs = MulticlassCalibrationError(num_classes=C, n_bins=n_bins, norm="l1")(probs, labels).item()
        assert expected_calibration_error(probs, labels, n_bins=n_bins) == pytest.approx(theirs, abs=1e-6)


def test_ece_of_confident_right_and_confident_wrong_predictions():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 0])) == 1.0
    # Half right at confidence 0.75: a gap of 0.25.
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.25)


def test_nll_matches_torch_cross_entropy(data):
    probs, labels = data
    expected = torch.nn.functional.nll_loss(probs.double().log(), labels).item()
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected, rel=1e-6)
    # A zero probability for the true class stays finite.
    assert math.isfinite(negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])))


def test_top_k_accuracy(data):
    probs, labels = data
    expected = MulticlassAccuracy(num_classes=C, average="micro", top_k=5)(probs, labels).item()
    assert top_k_accuracy(probs, labels, 5) == pytest.approx(expected, abs=1e-7)
    assert top_k_accuracy(probs, labels, C) == 1.0


def test_evaluation_summary_is_json_ready_and_consistent(data):
    probs, labels = data
    summary = evaluation_summary(probs, labels, NAMES)
    text = json.dumps(summary, allow_nan=False)
    back = json.loads(text)
    assert back["num_samples"] == len(labels) and back["num_classes"] == C
    assert back["accuracy"] == pytest.approx(accuracy(probs, labels))
    assert back["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    assert back["nll"] == pytest.approx(negative_log_likelihood(probs, labels))
    assert back["macro_auc"] == pytest.approx(roc_curves(probs, labels, C)["macro_auc"])
    assert list(back["per_class_auc"]) == NAMES
    assert back["confusion_matrix"] == confusion_matrix(probs, labels, C).tolist()
    assert back["report"]["classes"]["cat"]["support"] == int((labels == 3).sum())
    assert "top5_accuracy" in back


def test_summary_with_an_absent_class_writes_null_auc():
    probs, labels = random_predictions(5, n=100, num_classes=C)
    labels[labels == 9] = 8
    summary = evaluation_summary(probs.numpy(), labels.numpy(), NAMES)
    assert summary["per_class_auc"]["truck"] is None
    json.dumps(summary, allow_nan=False)


def test_bad_inputs_raise_data_errors():
    probs, labels = random_predictions(0, n=20)
    with pytest.raises(DataError, match="20 predictions but 19 labels"):
        accuracy(probs, labels[:19])
    with pytest.raises(DataError, match="labels must lie in 0..9"):
        confusion_matrix(probs.argmax(1), labels + 10, C)
    with pytest.raises(DataError, match="3 class names for 10 classes"):
        evaluation_summary(probs, labels, ["a", "b", "c"])
    with pytest.raises(DataError, match="no labels"):
        accuracy(np.array([]), np.array([]))
    with pytest.raises(DataError, match=r"\(N, C\)"):
        expected_calibration_error(probs[0], labels)
    with pytest.raises(DataError, match="integer class indices"):
        accuracy(probs, labels.float() + 0.5)
