"""Experiments built from training runs: reusable runs, a hyperparameter grid, external validation.

- :func:`ensure_run` trains once into ``<work_dir>/runs/<name>`` and reuses the run while the
  request (model, split files, every training setting) is unchanged, so each notebook can run
  alone and re-runs are cheap.
- :func:`one_factor_at_a_time` + :func:`run_grid` + :func:`summarise_grid` + :func:`plot_grid`:
  Study B's question (how learning rate, filters, kernel size, depth, activation and dropout
  change accuracy and F1), one factor at a time around a baseline, same data and seed for every
  configuration, optionally several seeds to show the noise. Finished configurations are kept in
  ``results.csv`` and skipped on re-run.
- :func:`build_external_split`: train on one source (PBC), test on the other (LMU), restricted to
  the classes both sources share, with wbc10 labels.
- :func:`comparison_table`: our measured results beside the two studies' published ones.

TensorFlow is imported inside the functions that train or predict, never at import time.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from wbc.errors import WbcError
from wbc.fileio import file_digest, write_csv_atomic, write_text_atomic

GRID_COLUMNS = ["config", "factor", "value", "seed", "accuracy", "macro_f1", "params", "seconds", "run_dir"]


def generalisation_gap(history: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: training and validation accuracy and their gap (a growing gap = over-fitting)."""
    table = pd.DataFrame({"epoch": range(1, len(history) + 1),
                          "phase": history["phase"] if "phase" in history else 1,
                          "accuracy": history["accuracy"], "val_accuracy": history["val_accuracy"]})
    table["gap"] = table["accuracy"] - table["val_accuracy"]
    return table.round(4).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Predictions and the comparison with the published studies
# --------------------------------------------------------------------------------------------

# The two reference studies' own test results (Study A: Table and text of the paper; Study B: Tabla 1).
PUBLISHED = [
    {"study": "Study A", "task": "wbc10", "model": "ResNet50 (ImageNet) + dense head", "accuracy": 0.9027,
     "macro_f1": 0.88, "data": "PBC + LMU, 12,450 images (test 997)", "image_size": 128, "epochs": 10,
     "framework": "Keras / TensorFlow"},
    {"study": "Study B", "task": "all4", "model": "CNN1", "accuracy": 0.7798, "macro_f1": 0.7527,
     "data": "ALL Kaggle, 3,256 images", "image_size": 224, "epochs": 100, "framework": "PyTorch"},
    {"study": "Study B", "task": "all4", "model": "CNN2", "accuracy": 0.8318, "macro_f1": 0.7982,
     "data": "ALL Kaggle, 3,256 images", "image_size": 224, "epochs": 100, "framework": "PyTorch"},
    {"study": "Study B", "task": "all4", "model": "ResNet18 (ImageNet), fine-tuned", "accuracy": 0.9969,
     "macro_f1": 0.9962, "data": "ALL Kaggle, 3,256 images", "image_size": 224, "epochs": 100,
     "framework": "PyTorch"},
]
COMPARISON_COLUMNS = ["kind", "study", "task", "model", "accuracy", "macro_f1", "accuracy_ci95", "data",
                      "profile", "image_size", "epochs", "framework"]


def published_results(study: str | None = None) -> pd.DataFrame:
    """The studies' published test results (``study``: "Study A", "Study B" or None for both)."""
    table = pd.DataFrame(PUBLISHED).assign(kind="published")
    return table[table["study"] == study] if study else table


def measured_result(ctx: Any, run_dir: str | Path, metrics: dict, task: str | None = None) -> dict:
    """One row of our own results, with the conditions it was measured under."""
    config = read_config(run_dir)
    epochs = int(config.get("epochs_run", config.get("epochs", 0)))
    low, high = metrics.get("ci95", {}).get("accuracy", (float("nan"), float("nan")))
    data = "demo data (synthetic)" if ctx.is_demo else f"{Path(ctx.data_dir).name}: {', '.join(ctx.datasets)}"
    return {"kind": "measured", "study": "this course", "task": task or ctx.dataset,
            "model": model_label(config), "accuracy": round(float(metrics["accuracy"]), 4),
            "macro_f1": round(float(metrics["macro_f1"]), 4), "accuracy_ci95": f"{low:.3f}-{high:.3f}",
            "data": f"{data} (test {metrics.get('n_images')})", "profile": ctx.profile.name,
            "image_size": config.get("image_size"), "epochs": epochs, "framework": "Keras / TensorFlow"}


MODEL_LABELS = {"cnn1": "CNN1", "cnn2": "CNN2", "resnet50": "ResNet50", "small_resnet": "small ResNet"}


def model_label(config: dict) -> str:
    """A readable model name from a run's config: "CNN2", "ResNet50, ImageNet", "ResNet50, random init"."""
    name = MODEL_LABELS.get(str(config.get("model")), str(config.get("model")))
    if config.get("model") != "resnet50":
        return name
    weights = config.get("weights")
    if weights in (None, "none", "None", ""):
        return f"{name}, random init"
    return f"{name}, ImageNet" if weights == "imagenet" else f"{name}, weights {Path(str(weights)).name}"


def comparison_table(measured: list[dict], study: str | None = None) -> pd.DataFrame:
    """Published rows of ``study`` (default: both) then our measured rows, one table."""
    rows = pd.concat([published_results(study), pd.DataFrame(measured)], ignore_index=True)
    rows = rows.reindex(columns=COMPARISON_COLUMNS)
    for column in ("accuracy_ci95", "profile"):
        rows[column] = rows[column].astype(object).where(rows[column].notna(), "")
    return rows


def confident_errors(predictions: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` wrong predictions made with the highest confidence (rows of ``predict_split``'s table)."""
    wrong = predictions[predictions["true_label"].astype(str) != predictions["predicted_label"].astype(str)]
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(n).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Hyperparameter grid (one factor at a time)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridConfig:
    """One configuration of the study: which factor moved, to what value, and all its settings."""

    name: str
    factor: str
    value: Any
    params: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """A folder-safe version of the name (``lr=0.01`` -> ``lr-0.01``)."""
        return re.sub(r"[^A-Za-z0-9_.]+", "-", self.name).strip("-")


def one_factor_at_a_time(baseline: dict, factors: dict[str, Iterable]) -> list[GridConfig]:
    """The baseline, then one configuration per factor value that differs from the baseline.

    Every factor must be a key of ``baseline`` (so each configuration changes exactly one thing).
    """
    unknown = sorted(set(factors) - set(baseline))
    if unknown:
        raise WbcError(f"factors {unknown} have no baseline value; baseline keys: {sorted(baseline)}")
    configs = [GridConfig("baseline", "baseline", "", dict(baseline))]
    for factor, values in factors.items():
        for value in values:
            if value != baseline[factor]:
                configs.append(GridConfig(f"{factor}={value}", factor, value, {**baseline, factor: value}))
    return configs


# Study B's question, asked of CNN2: one knob at a time around Study B's own CNN2.
# filters / kernel_size give one number per conv block ("6-12-32" = Study B's [6,5,1,0], [12,3,1,0], [32,3,1,1]).
STUDY_BASELINE = {"lr": 1e-3, "filters": "6-12-32", "kernel_size": "5-3-3", "depth": 3,
                  "activation": "relu", "dropout": 0.0}
STUDY_FACTORS = {
    "small": {"lr": [1e-2], "filters": ["12-24-64"], "kernel_size": ["3-3-3"], "depth": [2],
              "activation": ["tanh"]},
    "full": {"lr": [1e-2, 1e-4], "filters": ["3-6-16", "12-24-64"], "kernel_size": ["3-3-3", "5-5-5"],
             "depth": [1, 2], "activation": ["tanh", "elu"], "dropout": [0.3, 0.5]},
}
_STUDY_PADDING = (0, 0, 1)  # Study B's padding per block


def study_settings(profile: Any) -> dict:
    """Grid size for a profile: ``ci`` 32 px, 1 epoch, 1 seed, 6 configurations; else the profile's
    image size and ``study_epochs``, every factor at two values, 2 seeds (``demo``) or 3 (``full``)."""
    if profile.name == "ci":
        return {"image_size": 32, "epochs": profile.study_epochs, "seeds": [0],
                "factors": STUDY_FACTORS["small"]}
    return {"image_size": profile.image_size, "epochs": profile.study_epochs,
            "seeds": [0, 1] if profile.name == "demo" else [0, 1, 2], "factors": STUDY_FACTORS["full"]}


def cnn2_kwargs(knobs: dict) -> dict:
    """Turn study knobs (lr, filters, kernel_size, depth, activation, dropout) into ``train_model`` kwargs."""
    knobs = dict(knobs)
    filters = [int(f) for f in str(knobs.pop("filters", STUDY_BASELINE["filters"])).split("-")]
    kernels = [int(k) for k in str(knobs.pop("kernel_size", STUDY_BASELINE["kernel_size"])).split("-")]
    if len(filters) != len(kernels) or len(filters) > len(_STUDY_PADDING):
        raise WbcError(f"filters {filters} and kernel sizes {kernels} need one value per block (at most 3)")
    blocks = tuple((f, k, 1, p) for f, k, p in zip(filters, kernels, _STUDY_PADDING))
    return {**knobs, "blocks": blocks}


def score_run(run_dir: str | Path, split: str = "val", split_dir: str | Path | None = None) -> dict:
    """Accuracy, macro F1 and parameter count of a finished run on one split (nothing written)."""
    from wbc.evaluate import predict_split, probabilities
    from wbc.metrics import compute_metrics

    config = read_config(run_dir)
    classes = list(config["classes"])
    y_true, probs = probabilities(predict_split(run_dir, split=split, split_dir=split_dir), classes)
    metrics = compute_metrics(y_true, probs, classes)
    params = config.get("params_total")
    if params is None:
        from wbc.train import load_run

        params = load_run(run_dir)[0].count_params()
    return {"accuracy": float(metrics["accuracy"]), "macro_f1": float(metrics["macro_f1"]), "params": int(params)}


def _load_results(path: Path) -> pd.DataFrame:
    if path.is_file():
        return pd.read_csv(path, dtype={"config": str, "factor": str, "value": str}, keep_default_na=False)
    return pd.DataFrame(columns=GRID_COLUMNS)


def run_grid(split_dir: str | Path, model_name: str, configs: list[GridConfig], out_dir: str | Path, *,
             seeds: Iterable[int] = (0,), split: str = "val", progress: bool = True,
             to_kwargs: Callable[[dict], dict] | None = None, **train_kwargs) -> pd.DataFrame:
    """Train and score every configuration x seed; resumable through ``out_dir/results.csv``.

    Each configuration gets the same split, the same seeds and ``train_kwargs`` (epochs, image
    size, ...); only its own ``params`` differ. Scores are measured on ``split`` (validation by
    default: the test split stays untouched while choosing hyperparameters). Rows already in
    ``results.csv`` are kept and not trained again; each new row is saved as soon as it is done.
    ``to_kwargs`` turns a configuration's params into ``train_model`` kwargs (e.g. :func:`cnn2_kwargs`).
    Returns one row per configuration and seed (columns ``GRID_COLUMNS``).
    """
    out_dir = Path(out_dir)
    results_path = out_dir / "results.csv"
    results = _load_results(results_path)
    done = set(zip(results["config"].astype(str), results["seed"].astype(int)))
    seeds = [int(s) for s in seeds]
    todo = [(c, s) for c in configs for s in seeds if (c.name, s) not in done]
    print(f"Grid: {len(configs)} configurations x {len(seeds)} seed(s); "
          f"{len(done)} result(s) kept from {results_path.name}, {len(todo)} to train.")
    from tqdm.auto import tqdm

    for config, seed in tqdm(todo, desc="grid", disable=not progress):
        if "keras" in sys.modules:  # forget the previous models and their traced functions
            import keras

            keras.backend.clear_session()
        run_dir = out_dir / "runs" / f"{config.slug}-seed{seed}"
        start = time.perf_counter()
        params = to_kwargs(config.params) if to_kwargs else config.params
        train_or_reuse(run_dir, model_name, split_dir, seed=seed, **{**train_kwargs, **params})
        seconds = time.perf_counter() - start
        row = {"config": config.name, "factor": config.factor, "value": str(config.value), "seed": int(seed),
               **score_run(run_dir, split=split), "seconds": round(seconds, 1), "run_dir": str(run_dir)}
        results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)[GRID_COLUMNS]
        write_csv_atomic(results, results_path)
    results = _load_results(results_path)  # as saved, so a first run and a re-run return the same types
    order = {c.name: i for i, c in enumerate(configs)}
    wanted = results[results["config"].isin(order)]
    return wanted.sort_values(["config", "seed"], key=lambda s: s.map(order) if s.name == "config" else s,
                              ignore_index=True)


def summarise_grid(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds per configuration, and the change in macro F1 vs the baseline."""
    grouped = results.groupby(["config", "factor", "value"], sort=False, dropna=False)
    summary = grouped.agg(seeds=("seed", "nunique"), accuracy=("accuracy", "mean"),
                          accuracy_std=("accuracy", "std"), macro_f1=("macro_f1", "mean"),
                          macro_f1_std=("macro_f1", "std"), params=("params", "first"),
                          seconds=("seconds", "mean")).reset_index()
    base = summary.loc[summary["config"] == "baseline", "macro_f1"]
    summary["delta_macro_f1"] = summary["macro_f1"] - (base.iloc[0] if len(base) else float("nan"))
    return summary.round({"accuracy": 4, "accuracy_std": 4, "macro_f1": 4, "macro_f1_std": 4,
                          "delta_macro_f1": 4, "seconds": 1})


def plot_grid(summary: pd.DataFrame, metric: str = "macro_f1", title: str | None = None):
    """One panel per factor: ``metric`` per value (error bar: std over seeds), baseline dashed."""
    from matplotlib.figure import Figure

    factors = [f for f in summary["factor"].unique() if f != "baseline"]
    if not factors:
        raise WbcError("the grid summary has no factor besides the baseline: nothing to plot")
    base = summary[summary["config"] == "baseline"]
    label = {"macro_f1": "macro F1"}.get(metric, metric.replace("_", " "))
    fig = Figure(figsize=(2.8 * len(factors) + 1, 3.6))
    axes = fig.subplots(1, len(factors), sharey=True, squeeze=False)[0]
    for ax, factor in zip(axes, factors):
        rows = summary[summary["factor"] == factor]
        ax.bar(rows["value"].astype(str), rows[metric], yerr=rows[f"{metric}_std"].fillna(0),
               color="tab:blue", alpha=0.8, capsize=3, label="changed")
        if len(base):
            ax.axhline(base[metric].iloc[0], color="k", ls="--", lw=1, label="baseline")
        ax.set_title(factor)
        ax.set_xlabel(f"{factor} value")
        ax.tick_params(axis="x", rotation=30)
    axes[0].set_ylabel(f"{label} (validation)")
    axes[0].legend(loc="lower left", fontsize="small")
    fig.suptitle(title or f"{label} per factor, one factor changed at a time (bars: mean, whiskers: std over seeds)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# External validation: train on one source, test on the other
# --------------------------------------------------------------------------------------------

def shared_classes(manifest: pd.DataFrame, sources: tuple[str, str] = ("PBC", "LMU"),
                   min_images: int = 1) -> list[str]:
    """Labels with at least ``min_images`` images in every one of ``sources``, sorted (as classes.txt)."""
    counts = pd.crosstab(manifest["label"], manifest["source"])
    missing = [s for s in sources if s not in counts.columns]
    if missing:
        raise WbcError(f"the manifest has no {', '.join(missing)} images: external validation needs "
                       f"both {sources[0]} and {sources[1]} (found sources: {sorted(counts.columns)})")
    ok = (counts[list(sources)] >= min_images).all(axis=1)
    return sorted(str(label) for label, shared in ok.items() if shared)


@dataclass(frozen=True)
class ExternalSplit:
    """Two split folders: ``internal`` (train/val/test from one source), ``external`` (test from the other)."""

    internal: Path
    external: Path
    classes: list[str]

    def counts(self) -> pd.DataFrame:
        """Images per class in internal train / val / test and the external test, with totals."""
        parts = {name: pd.read_csv(self.internal / f"{name}.csv") for name in ("train", "val", "test")}
        parts["external test"] = pd.read_csv(self.external / "test.csv")
        table = pd.DataFrame({n: f["label"].value_counts() for n, f in parts.items()})
        table = table.reindex(self.classes).fillna(0).astype(int)
        table.loc["total"] = table.sum()
        return table


def build_external_split(manifest: pd.DataFrame | str | Path, out_dir: str | Path, *,
                         train_source: str = "PBC", test_source: str = "LMU",
                         fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
                         min_images: int = 2, rebuild: bool = False) -> ExternalSplit:
    """Split folders for external validation under ``out_dir`` (reused when complete).

    ``internal/``: train, val and test from ``train_source`` only (stratified, duplicate-aware:
    ``test`` is the *internal* test). ``external/test.csv``: every ``test_source`` image. Both
    keep only the labels the two sources share (at least ``min_images`` each); the others are
    printed. ``classes.txt`` (written last) is the same in both folders.
    """
    from wbc.split import split_manifest, write_split_folder

    out_dir = Path(out_dir)
    internal, external = out_dir / "internal", out_dir / "external"
    if not rebuild and (internal / "classes.txt").is_file() and (external / "classes.txt").is_file():
        print(f"External-validation splits: reusing {out_dir} (delete it or pass rebuild=True to rebuild)")
        return ExternalSplit(internal, external, (internal / "classes.txt").read_text().split())
    if not isinstance(manifest, pd.DataFrame):
        manifest = pd.read_csv(manifest, keep_default_na=False)
    classes = shared_classes(manifest, (train_source, test_source), min_images)
    if len(classes) < 2:
        raise WbcError(f"only {len(classes)} class(es) have >= {min_images} images in both {train_source} "
                       f"and {test_source}: {classes}; external validation needs at least two")
    left_out = sorted(set(manifest["label"]) - set(classes))
    if left_out:
        print(f"Left out (not in both {train_source} and {test_source} with >= {min_images} images): "
              f"{', '.join(left_out)}")
    kept = manifest[manifest["label"].isin(classes)]
    parts = split_manifest(kept[kept["source"] == train_source].reset_index(drop=True), fractions, seed)
    write_split_folder(parts, internal)
    write_csv_atomic(kept[kept["source"] == test_source].reset_index(drop=True), external / "test.csv")
    write_text_atomic(external / "classes.txt", (internal / "classes.txt").read_text())
    print(f"External-validation splits written to {out_dir}: train on {train_source}, test on {test_source}")
    return ExternalSplit(internal, external, classes)


def external_weights(model_name: str, weights: str | Path | None = "auto") -> str | Path | None:
    """Backbone weights for the external-validation model: resolved for resnet50, none otherwise."""
    if model_name != "resnet50":
        return None
    return weights  # "auto" is resolved by train_or_reuse, only when the run must be trained


def source_pairs(internal: pd.DataFrame, external: pd.DataFrame, classes: list[str],
                 per_class: int = 1) -> pd.DataFrame:
    """The first ``per_class`` images of each class from each table (columns path, caption)."""
    rows = []
    for label in classes:
        for frame in (internal, external):
            for path, source in frame.loc[frame["label"] == label, ["path", "source"]].head(per_class).itertuples(index=False):
                rows.append({"path": path, "caption": f"{label}\n{source}"})
    return pd.DataFrame(rows, columns=["path", "caption"])


def gradcam_examples(predictions: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """The ``n`` most confident correct predictions, then the ``n`` most confident wrong ones."""
    correct = predictions["true_label"].astype(str) == predictions["predicted_label"].astype(str)
    ranked = predictions.assign(correct=correct).sort_values("confidence", ascending=False, kind="stable")
    return pd.concat([ranked[ranked["correct"]].head(n), ranked[~ranked["correct"]].head(n)], ignore_index=True)


def external_comparison(internal: dict, external: dict, train_source: str = "PBC",
                        test_source: str = "LMU") -> pd.DataFrame:
    """Internal vs external test metrics (from ``evaluate_run``), one row each, with 95 % intervals."""
    rows = []
    for name, m in ((f"internal test ({train_source})", internal), (f"external test ({test_source})", external)):
        ci = m.get("ci95", {})
        rows.append({"test set": name, "images": m["n_images"], "accuracy": round(m["accuracy"], 4),
                     "accuracy 95% CI": "{:.3f}-{:.3f}".format(*ci.get("accuracy", (float("nan"),) * 2)),
                     "macro F1": round(m["macro_f1"], 4),
                     "macro F1 95% CI": "{:.3f}-{:.3f}".format(*ci.get("macro_f1", (float("nan"),) * 2)),
                     "balanced accuracy": round(m["balanced_accuracy"], 4)})
    return pd.DataFrame(rows).set_index("test set")


def plot_recall_by_source(internal: dict, external: dict, train_source: str = "PBC", test_source: str = "LMU"):
    """Per-class recall on the internal and the external test, side by side (a bar pair per class)."""
    import numpy as np
    from matplotlib.figure import Figure

    classes = list(internal["classes"])
    recall = {name: [(m["per_class"].get(c) or {}).get("recall") or 0.0 for c in classes]
              for name, m in ((f"internal ({train_source})", internal), (f"external ({test_source})", external))}
    x = np.arange(len(classes))
    fig = Figure(figsize=(max(6.0, 0.9 * len(classes) + 2), 4))
    ax = fig.subplots()
    for i, (name, values) in enumerate(recall.items()):
        ax.bar(x + (i - 0.5) * 0.4, values, width=0.4, label=name)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set(ylim=(0, 1.05), xlabel="class", ylabel="recall (sensitivity)",
           title=f"Trained on {train_source}: recall per class, internal vs external test")
    ax.legend()
    fig.tight_layout()
    return fig
