"""Experiment plumbing for notebooks 08-13: the published numbers, the study design, external splits.

- :func:`published_results`, :func:`measured_result`, :func:`comparison_table`: our measured
  results beside the two studies' published ones, each row with its conditions.
- :func:`one_factor_at_a_time` and :func:`study_settings`: the design of Study B's question (how
  learning rate, filters, kernel size, depth, activation and dropout change accuracy and F1), one
  factor at a time around a baseline. Notebook 12 trains and scores the configurations in its cells.
- :func:`build_external_split`: train on one source (PBC), test on the other (LMU), restricted to
  the classes both sources share, with wbc10 labels.
- :func:`generalisation_gap`: training minus validation accuracy per epoch (notebook 10).

TensorFlow is never imported here.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from wbc.errors import WbcError
from wbc.fileio import write_csv_atomic, write_text_atomic
from wbc.runs import read_config


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


# --------------------------------------------------------------------------------------------
# The hyperparameter study's design (one factor at a time)
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


def study_settings(profile: Any) -> dict:
    """Grid size for a profile: ``ci`` 32 px, 1 epoch, 1 seed, 6 configurations; else the profile's
    image size and ``study_epochs``, every factor at two values, 2 seeds (``demo``) or 3 (``full``)."""
    if profile.name == "ci":
        return {"image_size": 32, "epochs": profile.study_epochs, "seeds": [0],
                "factors": STUDY_FACTORS["small"]}
    return {"image_size": profile.image_size, "epochs": profile.study_epochs,
            "seeds": [0, 1] if profile.name == "demo" else [0, 1, 2], "factors": STUDY_FACTORS["full"]}


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
    """Split folders for external validation under ``out_dir``, reused while the manifest and the
    settings are those they were built from (``recipe.json``, written last), else rebuilt.

    ``internal/``: train, val and test from ``train_source`` only (stratified, duplicate-aware:
    ``test`` is the *internal* test). ``external/test.csv``: every ``test_source`` image. Both
    keep only the labels the two sources share (at least ``min_images`` each); the others are
    printed. ``classes.txt`` is the same in both folders.
    """
    from wbc.split import split_manifest, write_split_folder

    out_dir = Path(out_dir)
    internal, external = out_dir / "internal", out_dir / "external"
    if not isinstance(manifest, pd.DataFrame):
        manifest = pd.read_csv(manifest, keep_default_na=False)
    recipe = {"manifest": str(pd.util.hash_pandas_object(manifest.astype(str), index=False).sum()),
              "train_source": train_source, "test_source": test_source, "fractions": [float(f) for f in fractions],
              "seed": int(seed), "min_images": int(min_images)}
    recipe_path = out_dir / "recipe.json"
    complete = (internal / "classes.txt").is_file() and (external / "classes.txt").is_file()
    if not rebuild and complete and recipe_path.is_file():
        if json.loads(recipe_path.read_text()) == recipe:
            print(f"External-validation splits: reusing {out_dir} (same manifest and settings)")
            return ExternalSplit(internal, external, (internal / "classes.txt").read_text().split())
        print(f"External-validation splits: manifest or settings changed since {out_dir} was built: rebuilding")
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
    write_text_atomic(recipe_path, json.dumps(recipe, sort_keys=True))
    print(f"External-validation splits written to {out_dir}: train on {train_source}, test on {test_source}")
    return ExternalSplit(internal, external, classes)
