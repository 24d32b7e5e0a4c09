"""Metrics computed from predicted probabilities (numpy and scikit-learn only, no TensorFlow).

Every figure is derived from ``probs`` (one row per image, one column per class): the
predicted label is the arg-max, the loss is the cross-entropy of the true class, and ROC
curves sweep the probability of each class (one-vs-rest). Classes absent from ``y_true``
cannot have an AUC or a recall; they get ``None`` and a note instead of an error.
"""
from __future__ import annotations

from typing import Sequence

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
    """Confusion matrix ``cm[true, predicted]`` for ``n`` classes.

    ``normalise="true"`` divides each row by its support (rows of absent classes stay 0).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    if normalise is None:
        return cm
    if normalise != "true":
        raise WbcError(f"normalise must be None or 'true', got {normalise!r}")
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


def cross_entropy(y_true, probs) -> float:
    """Mean categorical cross-entropy of the true class, probabilities clipped to [EPS, 1]."""
    y, p = check_inputs(y_true, probs)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, 1.0))))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _counts(cm: np.ndarray) -> dict[str, np.ndarray]:
    """True/false positives/negatives per class from a confusion matrix (last two axes)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support = cm.sum(axis=-1)
    predicted = cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))[..., None]
    fp, fn = predicted - tp, support - tp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": total - tp - fp - fn, "support": support, "predicted": predicted}


def _f1_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 and a mask of the classes scikit-learn averages over (in y_true or y_pred)."""
    c = _counts(cm)
    f1 = _safe_div(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    return f1, (c["support"] + c["predicted"]) > 0


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    f1, present = _f1_scores(cm)
    return _safe_div((f1 * present).sum(axis=-1), present.sum(axis=-1))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive.astype(int), score))


def compute_metrics(y_true, probs, classes: Sequence[str]) -> dict:
    """All summary and per-class metrics of one set of predictions.

    Returns a JSON-ready dict: ``accuracy``, ``loss``, ``macro_f1``, ``weighted_f1``,
    ``balanced_accuracy``, ``auc_macro`` (mean of the defined per-class AUCs), ``auc_micro``,
    ``n_images``, ``classes``, ``per_class`` (class -> precision, recall, specificity, f1,
    support, auc) and ``notes`` (why a figure is missing). Undefined figures are ``None``.
    """
    classes = [str(c) for c in classes]
    y, p = check_inputs(y_true, probs, classes)
    k = len(classes)
    y_pred = p.argmax(axis=1)
    cm = confusion(y, y_pred, k)
    c = _counts(cm)
    precision = _safe_div(c["tp"], c["predicted"])
    recall = _safe_div(c["tp"], c["support"])
    specificity = _safe_div(c["tn"], c["tn"] + c["fp"])
    f1, _ = _f1_scores(cm)
    present = c["support"] > 0
    notes: list[str] = []

    aucs: list[float | None] = []
    for i, name in enumerate(classes):
        positive = y == i
        if positive.all() or not positive.any():
            why = "absent from" if not positive.any() else "the only class in"
            notes.append(f"class {name!r} is {why} the true labels: its AUC and recall are undefined")
            aucs.append(None)
        else:
            aucs.append(_binary_auc(positive, p[:, i]))
    defined = [a for a in aucs if a is not None]
    onehot = np.eye(k, dtype=int)[y]
    auc_micro = _binary_auc(onehot.ravel(), p.ravel()) if 0 < onehot.sum() < onehot.size and k > 1 else None

    per_class = {}
    for i, name in enumerate(classes):
        per_class[name] = {
            "precision": float(precision[i]),
            "recall": float(recall[i]) if present[i] else None,
            "specificity": float(specificity[i]) if (c["tn"][i] + c["fp"][i]) > 0 else None,
            "f1": float(f1[i]),
            "support": int(c["support"][i]),
            "auc": aucs[i],
        }
    return {
        "accuracy": float(np.mean(y_pred == y)),
        "loss": cross_entropy(y, p),
        "macro_f1": float(_macro_f1(cm)),
        "weighted_f1": float(np.sum(f1 * c["support"]) / c["support"].sum()),
        "balanced_accuracy": float(recall[present].mean()),
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
    return classification_report(y, p.argmax(axis=1), labels=list(range(len(classes))),
                                 target_names=[str(c) for c in classes], digits=3, zero_division=0)


def bootstrap_ci(y_true, probs, metric: str = "accuracy", n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval (``1 - alpha``) of ``accuracy`` or ``macro_f1``.

    Images are resampled with replacement ``n_boot`` times; the metric of each resample is
    computed from its confusion matrix (vectorised, so 1,000 resamples take well under a second).
    """
    if metric not in CI_METRICS:
        raise WbcError(f"bootstrap metric must be one of {', '.join(CI_METRICS)}, got {metric!r}")
    if n_boot < 1:
        raise WbcError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise WbcError(f"alpha must lie between 0 and 1, got {alpha}")
    y, p = check_inputs(y_true, probs)
    n, k = p.shape
    codes = y * k + p.argmax(axis=1)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # resamples per batch, bounding memory to a few MB
    values = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        sample = codes[rng.integers(0, n, size=(b, n))]
        flat = (np.arange(b)[:, None] * k * k + sample).ravel()
        cms = np.bincount(flat, minlength=b * k * k).reshape(b, k, k)
        if metric == "accuracy":
            values.append(np.trace(cms, axis1=1, axis2=2) / n)
        else:
            values.append(_macro_f1(cms))
    values = np.concatenate(values)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
