"""Metrics computed from predicted probabilities (scikit-learn does the counting; no TensorFlow).

Every figure is derived from ``probs`` (one row per image, one column per class): the
predicted label is the arg-max, the loss is the cross-entropy of the true class, and ROC
curves sweep the probability of each class (one-vs-rest). Classes absent from ``y_true``
cannot have an AUC or a recall; they get ``None`` and a note instead of an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from wbc.errors import WbcError

EPS = 1e-7  # probabilities are clipped to [EPS, 1] before taking logarithms (as Keras does)
CI_METRICS = ("accuracy", "macro_f1")


def check_inputs(y_true, probs, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` as int array and ``probs`` as float64 (n, k) array; WbcError when they disagree."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise WbcError(f"probabilities must be a 2-D array (images x classes), got shape {p.shape}")
    if y.ndim != 1 or len(y) != len(p):
        raise WbcError(f"{len(y)} labels for {len(p)} rows of probabilities: they must match one to one")
    if len(y) == 0:
        raise WbcError("no images to evaluate (empty labels)")
    if classes is not None and len(classes) != p.shape[1]:
        raise WbcError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    if not np.issubdtype(y.dtype, np.integer):
        raise WbcError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise WbcError(f"label index out of range 0..{p.shape[1] - 1}: found {y.min()}..{y.max()}")
    if not np.all(np.isfinite(p)):
        raise WbcError("probabilities contain NaN or infinity (did training diverge?)")
    return y.astype(np.int64), p


def confusion(y_true, y_pred, n: int, normalise: str | None = None) -> np.ndarray:
    """Confusion matrix ``cm[true, predicted]`` for ``n`` classes (scikit-learn's ``confusion_matrix``).

    ``normalise="true"`` divides each row by its support (rows of absent classes stay 0).
    """
    from sklearn.metrics import confusion_matrix

    if normalise not in (None, "true"):
        raise WbcError(f"normalise must be None or 'true', got {normalise!r}")
    cm = confusion_matrix(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64), labels=list(range(n)))
    if normalise is None:
        return cm
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


def cross_entropy(y_true, probs) -> float:
    """Mean categorical cross-entropy of the true class, probabilities clipped to [EPS, 1]."""
    y, p = check_inputs(y_true, probs)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def macro_f1(y_true, y_pred) -> float:
    """scikit-learn's macro F1: the mean F1 of the classes present in ``y_true`` or ``y_pred``."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def compute_metrics(y_true, probs, classes: Sequence[str]) -> dict:
    """All summary and per-class metrics of one set of predictions (scikit-learn does the counting).

    Returns a JSON-ready dict: ``accuracy``, ``loss``, ``macro_f1``, ``weighted_f1``,
    ``balanced_accuracy``, ``auc_macro`` (mean of the defined per-class AUCs), ``auc_micro``,
    ``n_images``, ``classes``, ``per_class`` (class -> precision, recall, specificity, f1,
    support, auc) and ``notes`` (why a figure is missing). Undefined figures are ``None``.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

    classes = [str(c) for c in classes]
    y, p = check_inputs(y_true, probs, classes)
    k = len(classes)
    y_pred = p.argmax(axis=1)
    labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=0)
    cm = confusion(y, y_pred, k)
    fp = cm.sum(axis=0) - np.diag(cm)  # predicted as the class, but another class
    tn = len(y) - support - fp  # neither the class nor predicted as it
    present = support > 0
    notes: list[str] = []
    aucs: list[float | None] = []
    for i, name in enumerate(classes):
        positive = y == i
        if positive.all() or not positive.any():
            why = "absent from" if not positive.any() else "the only class in"
            notes.append(f"class {name!r} is {why} the true labels: its AUC and recall are undefined")
            aucs.append(None)
        else:
            aucs.append(float(roc_auc_score(positive, p[:, i])))
    defined = [a for a in aucs if a is not None]
    onehot = np.eye(k, dtype=int)[y]
    auc_micro = float(roc_auc_score(onehot.ravel(), p.ravel())) if 0 < onehot.sum() < onehot.size and k > 1 else None
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]) if present[i] else None,
            "specificity": float(tn[i] / (tn[i] + fp[i])) if tn[i] + fp[i] > 0 else None,
            "f1": float(f1[i]),
            "support": int(support[i]),
            "auc": aucs[i],
        }
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "loss": cross_entropy(y, p),
        "macro_f1": macro_f1(y, y_pred),
        "weighted_f1": float(f1_score(y, y_pred, labels=labels, average="weighted", zero_division=0)),
        "balanced_accuracy": float(recall[present].mean()),  # sklearn's balanced_accuracy_score, without its warning
        "auc_macro": float(np.mean(defined)) if defined else None,
        "auc_micro": auc_micro,
        "n_images": int(len(y)),
        "classes": classes,
        "per_class": per_class,
        "notes": notes,
    }


def per_class_table(metrics: dict) -> pd.DataFrame:
    """The ``per_class`` part of :func:`compute_metrics` as a table, one row per class."""
    rows = [{"class": name, **values} for name, values in metrics["per_class"].items()]
    columns = ["class", "precision", "recall", "specificity", "f1", "support", "auc"]
    return pd.DataFrame(rows, columns=columns)


def classification_report_text(y_true, probs, classes: Sequence[str]) -> str:
    """scikit-learn's ``classification_report`` of the arg-max predictions (every class listed)."""
    from sklearn.metrics import classification_report

    y, p = check_inputs(y_true, probs, classes)
    return classification_report(
        y,
        p.argmax(axis=1),
        labels=list(range(len(classes))),
        target_names=[str(c) for c in classes],
        digits=3,
        zero_division=0,
    )


def bootstrap_ci(
    y_true, probs, metric: str = "accuracy", n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval (``1 - alpha``) of ``accuracy`` or ``macro_f1``.

    Images are resampled with replacement ``n_boot`` times (each resample: ``n`` indices drawn
    from ``rng.integers``) and the metric is recomputed on each; the interval is the
    ``alpha / 2`` and ``1 - alpha / 2`` quantiles. Notebook 11 writes the same loop out.
    """
    if metric not in CI_METRICS:
        raise WbcError(f"bootstrap metric must be one of {', '.join(CI_METRICS)}, got {metric!r}")
    if n_boot < 1:
        raise WbcError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise WbcError(f"alpha must lie between 0 and 1, got {alpha}")
    y, p = check_inputs(y_true, probs)
    y_pred = p.argmax(axis=1)
    n = len(y)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        i = rng.integers(0, n, size=n)
        values.append(np.mean(y[i] == y_pred[i]) if metric == "accuracy" else macro_f1(y[i], y_pred[i]))
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
