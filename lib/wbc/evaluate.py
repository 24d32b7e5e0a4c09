"""The CLI's evaluation of a run and its prediction on new images.

``evaluate_run(run_dir)`` predicts a split of the run's split folder and writes into
``run_dir/evaluation/<split>/`` (another split folder, for external validation: ``<folder
name>-<split>/``, so the run's own results are never overwritten): ``metrics.json`` (accuracy,
loss, F1, balanced accuracy, AUC, bootstrap 95 % intervals, per-class figures), ``report.csv`` /
``report.md`` (per class + scikit-learn's classification report), ``confusion_counts.csv``,
``confusion_normalised.csv``, ``predictions.csv`` and the figures ``curves.png``,
``confusion.png``, ``confusion_normalised.png``, ``roc.png``, ``errors.png`` (the most confident
mistakes). Every file is written atomically. ``classify_images`` predicts image files (any
format ``wbc.images`` reads) with the run's preprocessing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wbc.checks import check_split_classes
from wbc.errors import WbcError
from wbc.fileio import write_csv_atomic, write_text_atomic
from wbc.locking import FolderLock
from wbc.metrics import bootstrap_ci, classification_report_text, compute_metrics, confusion, per_class_table

if TYPE_CHECKING:  # pragma: no cover
    import keras

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_GALLERY = 16  # misclassified images shown in errors.png
DISPLAY_SIZE = 128  # pixel size of the gallery thumbnails
PREDICT_CHUNK = 256  # images read and predicted at a time by classify_images


def open_run(run_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """``(model, config)`` of a run folder (``runs.load_run``), with the keys evaluation needs."""
    from wbc.runs import load_run

    model, config = load_run(run_dir)
    missing = {"classes", "image_size"} - set(config)
    if missing:
        raise WbcError(f"{Path(run_dir) / 'config.json'}: missing key(s) {', '.join(sorted(missing))}")
    return model, config


def evaluation_dir(
    run_dir: str | os.PathLike,
    split: str = "test",
    split_dir: str | os.PathLike | None = None,
    config: dict | None = None,
) -> Path:
    """Where :func:`evaluate_run` writes: ``evaluation/<split>`` for the run's own split folder,
    ``evaluation/<folder name>-<split>`` for another one."""
    own = (config or {}).get("split_dir")
    if split_dir is None or (own and Path(split_dir).resolve() == Path(own).resolve()):
        return Path(run_dir) / "evaluation" / split
    return Path(run_dir) / "evaluation" / f"{Path(split_dir).resolve().name}-{split}"


def _split_dir(config: dict, split_dir: str | os.PathLike | None, run_dir: Path) -> Path:
    chosen = split_dir or config.get("split_dir")
    if not chosen:
        raise WbcError(f"{run_dir / 'config.json'} names no split_dir: pass --split-dir DIR")
    if not Path(chosen).is_dir():
        raise WbcError(f"{chosen}: split folder not found (moved or deleted? pass --split-dir DIR)")
    return Path(chosen)


# ----------------------------------------------------------------------------- predictions


def _predict(model, dataset_or_images, paths: Sequence[str]) -> np.ndarray:
    """``model.predict`` as float64, naming undecodable files instead of a TensorFlow trace."""
    import tensorflow as tf

    try:
        return np.asarray(model.predict(dataset_or_images, verbose=0), dtype=np.float64)
    except tf.errors.OpError:
        from wbc.pipeline import raise_if_undecodable

        raise_if_undecodable(paths)
        raise


def _prediction_frame(paths: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "path": list(paths),
            "predicted_label": [classes[i] for i in probs.argmax(axis=1)],
            "confidence": probs.max(axis=1),
        }
    )
    return frame.join(pd.DataFrame(probs, columns=[f"p_{c}" for c in classes]))


def predict_split(
    run_dir: str | os.PathLike, split: str = "test", split_dir: str | os.PathLike | None = None, batch_size: int = 64
) -> pd.DataFrame:
    """Predict every image of a split: columns ``path``, ``true_label``, ``predicted_label``,
    ``confidence`` (probability of the predicted class), ``correct`` and ``p_<class>`` per class."""
    model, config = open_run(run_dir)
    return predict_frame(model, config, split, _split_dir(config, split_dir, Path(run_dir)), batch_size)


def predict_frame(model, config: dict, split: str, split_dir: str | os.PathLike, batch_size: int = 64) -> pd.DataFrame:
    """:func:`predict_split` for a model already in memory and its run configuration."""
    from wbc.pipeline import load_split, split_dataset

    classes = list(config["classes"])
    frame = load_split(split_dir, split)
    if frame.empty:
        raise WbcError(f"split {split!r} has no images")
    paths = frame["path"].astype(str).tolist()
    probs = _predict(model, split_dataset(frame, classes, int(config["image_size"]), batch_size), paths)
    out = _prediction_frame(paths, probs, classes)
    out.insert(1, "true_label", frame["label"].astype(str).to_numpy())
    out.insert(4, "correct", out["true_label"] == out["predicted_label"])
    return out


def probabilities(predictions: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true indices, probs)`` back from a predictions table (as in ``predictions.csv``)."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in predictions["true_label"].astype(str)], dtype=np.int64)
    return y, predictions[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)


# ----------------------------------------------------------------------------- reports


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (floats with 3 decimals, missing values as n/a)."""

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.astype(object).to_numpy()]
    return "\n".join(
        ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "|".join("---" for _ in frame.columns) + "|", *rows]
    )


def report_markdown(metrics: dict, report_text: str) -> str:
    """``report.md``: summary with 95 % intervals, per-class table, classification report."""
    ci = {m: f"{low:.3f} - {high:.3f}" for m, (low, high) in metrics["ci95"].items()}
    summary = pd.DataFrame(
        [
            ("accuracy", metrics["accuracy"], ci["accuracy"]),
            ("macro F1", metrics["macro_f1"], ci["macro_f1"]),
            ("weighted F1", metrics["weighted_f1"], ""),
            ("balanced accuracy", metrics["balanced_accuracy"], ""),
            ("loss (cross-entropy)", metrics["loss"], ""),
            ("AUC macro (one-vs-rest)", metrics["auc_macro"], ""),
            ("AUC micro", metrics["auc_micro"], ""),
        ],
        columns=["metric", "value", "95% CI (bootstrap)"],
    )
    notes = "".join(f"- {note}\n" for note in metrics["notes"])
    return (
        f"# Evaluation: {metrics['split']} split, {metrics['n_images']} images\n\n"
        f"Run: `{metrics['run_dir']}`  \nSplit folder: `{metrics['split_dir']}`\n\n"
        f"{markdown_table(summary)}\n\n## Per class\n\n{markdown_table(per_class_table(metrics))}\n\n"
        + (f"## Notes\n\n{notes}\n" if notes else "")
        + f"## scikit-learn classification report\n\n```\n{report_text}```\n"
    )


def write_figures(out: Path, run_dir: Path, predictions: pd.DataFrame, metrics: dict) -> list[str]:
    """All evaluation PNGs; returns notes about figures that could not be drawn."""
    from wbc.pipeline import load_raw_images
    from wbc.plots import plot_confusion_matrix, plot_history, plot_image_gallery, plot_roc
    from wbc.runs import read_history

    classes = metrics["classes"]
    y, probs = probabilities(predictions, classes)
    notes = []
    if (run_dir / "history.csv").is_file() and (run_dir / "history.csv").stat().st_size > 0:
        plot_history(read_history(run_dir), path=out / "curves.png", title=f"Training curves: {run_dir.name}")
    else:
        notes.append(f"{run_dir / 'history.csv'} not found: curves.png not drawn")
    plot_confusion_matrix(confusion(y, probs.argmax(1), len(classes)), classes, path=out / "confusion.png")
    plot_confusion_matrix(
        confusion(y, probs.argmax(1), len(classes), normalise="true"),
        classes,
        normalised=True,
        path=out / "confusion_normalised.png",
    )
    plot_roc(y, probs, classes, path=out / "roc.png")
    wrong = predictions[~predictions["correct"]].sort_values("confidence", ascending=False).head(MAX_GALLERY)
    plot_image_gallery(
        load_raw_images(wrong["path"].tolist(), DISPLAY_SIZE) if len(wrong) else [],
        [
            f"true: {t}\npred: {p} ({c:.2f})"
            for t, p, c in zip(wrong["true_label"], wrong["predicted_label"], wrong["confidence"])
        ],
        ncols=4,
        path=out / "errors.png",
        title=f"Misclassified images, most confident first ({len(wrong)} of {int((~predictions['correct']).sum())})",
    )
    return notes


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    split_dir: str | os.PathLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Evaluate a run on one split, holding the run folder's lock; writes metrics, tables, predictions
    and figures (see the module docstring) and returns ``metrics.json``'s content plus ``out_dir``."""
    run_dir = Path(run_dir)
    with FolderLock(run_dir, "evaluate"):  # re-entrant: the CLI holds it already
        model, config = open_run(run_dir)
        classes = list(config["classes"])
        chosen = _split_dir(config, split_dir, run_dir)
        check_split_classes(chosen, run_dir)  # same classes, same order: class indices mean the same
        out = evaluation_dir(run_dir, split, split_dir, config)
        predictions = predict_frame(model, config, split, chosen)
        y, probs = probabilities(predictions, classes)
        metrics = compute_metrics(y, probs, classes)
        metrics["ci95"] = {
            m: list(bootstrap_ci(y, probs, m, n_boot=n_boot, seed=seed)) for m in ("accuracy", "macro_f1")
        }
        metrics.update(
            split=split,
            split_dir=str(chosen.resolve()),
            run_dir=str(run_dir.resolve()),
            model=config.get("model"),
            n_boot=n_boot,
        )
        write_csv_atomic(predictions, out / "predictions.csv")
        write_csv_atomic(per_class_table(metrics), out / "report.csv")
        for name, normalise in (("confusion_counts.csv", None), ("confusion_normalised.csv", "true")):
            cm = pd.DataFrame(confusion(y, probs.argmax(1), len(classes), normalise), columns=classes)
            write_csv_atomic(cm.assign(true_class=classes)[["true_class", *classes]], out / name)
        metrics["notes"] += write_figures(out, run_dir, predictions, metrics)
        write_text_atomic(out / "report.md", report_markdown(metrics, classification_report_text(y, probs, classes)))
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return {**metrics, "out_dir": str(out)}


# ----------------------------------------------------------------------------- new images


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named, plus every image file (by suffix) inside the folders named, sorted."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise WbcError(f"{item}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise WbcError(f"{item}: no such file or folder")
    if not files:
        raise WbcError("no images given")
    return files


def read_model_input(path: str | os.PathLike, image_size: int, preprocess: dict | None = None) -> np.ndarray:
    """One image file (any format ``wbc.images`` reads: TIFF too) as uint8 RGB at ``image_size``,
    resized as the training pipeline does (bilinear with antialiasing, rounded). ``preprocess`` (a
    run's ``config["preprocess"]``) first gives a raw image the crop around the cell, the colour or
    stain normalisation and the resize mode its training images had; an image a preprocess run wrote
    already has them. A cropped run and an image without a cell: WbcError naming the file."""
    import tensorflow as tf

    from wbc.images import read_image
    from wbc.preprocess import apply_preprocess_settings, preprocess_settings

    image = read_image(path)
    if preprocess and preprocess_settings(path) is None:
        image = apply_preprocess_settings(image, preprocess, str(path))
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def predict_images(
    run_dir: str | os.PathLike, paths: Sequence[str | os.PathLike], top_k: int = 3, skip_unreadable: bool = False
) -> pd.DataFrame:
    """Classify image files or folders with a trained run (see :func:`classify_images`)."""
    model, config = open_run(run_dir)
    return classify_images(model, config, paths, top_k, skip_unreadable)


def classify_images(
    model, config: dict, paths: Sequence[str | os.PathLike], top_k: int = 3, skip_unreadable: bool = False
) -> pd.DataFrame:
    """Classify image files or folders with a model in memory and its run configuration.

    Columns: ``path``, ``predicted_label``, ``confidence``, ``top<i>_label`` / ``top<i>_prob`` for
    i = 1..top_k, ``p_<class>`` per class and ``error``. An unreadable image raises WbcError naming
    it and the reason; with ``skip_unreadable=True`` it gets a row with the reason in ``error``.
    """
    from wbc.images import BadImageError

    classes, size = list(config["classes"]), int(config["image_size"])
    if top_k < 1:
        raise WbcError(f"--top-k must be at least 1, got {top_k}")
    top_k = min(top_k, len(classes))
    files = image_files(paths)
    rows, errors = [], []
    for start in range(0, len(files), PREDICT_CHUNK):
        good, pixels = [], []
        for path in files[start : start + PREDICT_CHUNK]:
            try:
                pixels.append(read_model_input(path, size, config.get("preprocess")))
                good.append(str(path))
            except BadImageError as exc:
                errors.append((str(path), exc.reason))
        if good:  # raw RGB pixels: the model scales them itself
            rows.append(_prediction_frame(good, _predict(model, np.stack(pixels).astype(np.float32), good), classes))
    if errors and not skip_unreadable:
        raise WbcError(f"{len(errors)} unreadable image(s):\n  " + "\n  ".join(f"{p}: {why}" for p, why in errors[:10]))
    frame = pd.concat(rows, ignore_index=True) if rows else _prediction_frame([], np.zeros((0, len(classes))), classes)
    probs = frame[[f"p_{c}" for c in classes]].to_numpy()
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    for i in range(top_k):
        frame.insert(3 + 2 * i, f"top{i + 1}_label", [classes[j] for j in order[:, i]])
        frame.insert(4 + 2 * i, f"top{i + 1}_prob", probs[np.arange(len(frame)), order[:, i]])
    frame["error"] = ""
    if errors:
        frame = pd.concat(
            [frame, pd.DataFrame({"path": [p for p, _ in errors], "error": [w for _, w in errors]})], ignore_index=True
        )
    return frame
