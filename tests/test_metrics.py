"""Metrics from probabilities agree with scikit-learn; specificity and intervals checked by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from wbc.errors import WbcError
from wbc.metrics import bootstrap_ci, compute_metrics, confusion, cross_entropy, per_class_table

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte"]


def noisy_predictions(n: int, k: int = 4, skill: float = 1.5, seed: int = 0):
    """Labels and softmax probabilities of a classifier that is right more often than not."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += skill
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def test_summary_metrics_equal_sklearn():
    y, p = noisy_predictions(300)
    pred = p.argmax(axis=1)
    m = compute_metrics(y, p, CLASSES)
    assert 0.3 < m["accuracy"] < 0.95  # a non-trivial classifier, so the comparisons mean something
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["loss"] == pytest.approx(skm.log_loss(y, p, labels=range(4)))
    assert m["auc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    onehot = np.eye(4)[y]
    assert m["auc_micro"] == pytest.approx(skm.roc_auc_score(onehot, p, average="micro"))
    assert m["n_images"] == 300 and m["classes"] == CLASSES and m["notes"] == []


def test_per_class_metrics_equal_sklearn():
    y, p = noisy_predictions(200, seed=1)
    pred = p.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=range(4))
    table = per_class_table(compute_metrics(y, p, CLASSES))
    assert list(table["class"]) == CLASSES
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["recall"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)
    for i in range(4):
        assert table["auc"][i] == pytest.approx(skm.roc_auc_score(y == i, p[:, i]))


def test_specificity_from_a_known_confusion_matrix():
    # cm[true, pred] = [[5, 1, 0], [2, 6, 2], [0, 1, 3]] built from explicit label pairs.
    cm = np.array([[5, 1, 0], [2, 6, 2], [0, 1, 3]])
    pairs = [(t, q) for t in range(3) for q in range(3) for _ in range(cm[t, q])]
    y = np.array([t for t, _ in pairs])
    probs = np.full((len(pairs), 3), 0.1)
    probs[np.arange(len(pairs)), [q for _, q in pairs]] = 0.8
    np.testing.assert_array_equal(confusion(y, probs.argmax(1), 3), cm)
    m = compute_metrics(y, probs, ["a", "b", "c"])
    # class a: TN = 6+2+1+3 = 12, FP = 2 -> 12/14; b: TN = 5+0+0+3 = 8, FP = 1+1 -> 8/10;
    # c: TN = 5+1+2+6 = 14, FP = 0+2 -> 14/16.
    assert m["per_class"]["a"]["specificity"] == pytest.approx(12 / 14)
    assert m["per_class"]["b"]["specificity"] == pytest.approx(8 / 10)
    assert m["per_class"]["c"]["specificity"] == pytest.approx(14 / 16)
    assert m["per_class"]["b"]["recall"] == pytest.approx(6 / 10)


def test_confusion_normalised_rows_sum_to_one_or_zero():
    cm = confusion([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 3, normalise="true")
    np.testing.assert_allclose(cm, [[0.5, 0.5, 0], [1 / 3, 2 / 3, 0], [0, 0, 0]])
    with pytest.raises(WbcError, match="normalise"):
        confusion([0], [0], 2, normalise="pred")


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_missing_from_true_labels_is_noted_not_fatal():
    y, p = noisy_predictions(120, seed=2)
    keep = y != 3  # no monocytes in the truth, yet the model may still predict them
    y, p = y[keep], p[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may escape as a warning either
        m = compute_metrics(y, p, CLASSES)
    mono = m["per_class"]["monocyte"]
    assert mono["auc"] is None and mono["recall"] is None and mono["support"] == 0
    assert any("monocyte" in note for note in m["notes"])
    expected_macro = np.mean([skm.roc_auc_score(y == i, p[:, i]) for i in range(3)])
    assert m["auc_macro"] == pytest.approx(expected_macro)
    pred = p.argmax(axis=1)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_loss_is_clipped_for_confident_mistakes():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    loss = cross_entropy([1, 1], probs)
    assert np.isfinite(loss) and loss == pytest.approx(-np.log(1e-7) / 2)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_interval_contains_estimate_and_narrows(metric):
    point = {
        "accuracy": lambda y, p: skm.accuracy_score(y, p.argmax(1)),
        "macro_f1": lambda y, p: skm.f1_score(y, p.argmax(1), average="macro"),
    }[metric]
    widths = []
    for n in (80, 2000):
        y, p = noisy_predictions(n, seed=3)
        low, high = bootstrap_ci(y, p, metric=metric, n_boot=500, seed=0)
        assert low <= point(y, p) <= high
        assert 0 <= low < high <= 1
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # the width shrinks like 1/sqrt(n): 5x narrower expected
    y, p = noisy_predictions(80, seed=3)
    assert bootstrap_ci(y, p, metric=metric, n_boot=200, seed=7) == bootstrap_ci(
        y, p, metric=metric, n_boot=200, seed=7
    )


def test_bootstrap_matches_a_plain_loop():
    y, p = noisy_predictions(60, seed=4)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 60, size=(50, 60))
    loop = [skm.f1_score(y[i], p[i].argmax(1), average="macro") for i in idx]
    low, high = bootstrap_ci(y, p, metric="macro_f1", n_boot=50, seed=0)
    assert (low, high) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])))


@pytest.mark.parametrize(
    "y, probs, match",
    [
        ([0, 1], np.ones((3, 2)) / 2, "match"),
        ([0, 2], np.ones((2, 2)) / 2, "out of range"),
        ([0.0, 1.0], np.ones((2, 2)) / 2, "integer"),
        ([0, 1], np.full((2, 2), np.nan), "NaN"),
    ],
)
def test_bad_inputs_raise_clear_errors(y, probs, match):
    with pytest.raises(WbcError, match=match):
        compute_metrics(y, probs, ["a", "b"])
    with pytest.raises(WbcError, match="class names"):
        compute_metrics([0, 1], np.ones((2, 2)) / 2, ["a", "b", "c"])
