"""The studies' side of notebooks 08-13: published numbers beside ours, and Study B's design.

- :func:`published_results`, :func:`measured_result`, :func:`comparison_table`: our measured
  results beside the two studies' published ones, each row with its conditions.
- :func:`one_factor_at_a_time` and :func:`study_settings`: Study B's question (how learning rate,
  filters, kernel size, depth, activation and dropout change accuracy and F1), one factor at a
  time around a baseline; notebook 12 trains and scores the configurations in its cells.
- :func:`generalisation_gap`: training minus validation accuracy per epoch.

The external-validation split (train on PBC, test on LMU) is a split: ``wbc.split.build_external_split``
(also reachable here, as notebook 13 calls it). TensorFlow is never imported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from wbc.errors import WbcError
from wbc.runs import read_config
from wbc.split import ExternalSplit, build_external_split, shared_classes  # noqa: F401 (notebook 13)


def generalisation_gap(history: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: training and validation accuracy and their gap (a growing gap = over-fitting)."""
    table = pd.DataFrame(
        {
            "epoch": range(1, len(history) + 1),
            "phase": history["phase"] if "phase" in history else 1,
            "accuracy": history["accuracy"],
            "val_accuracy": history["val_accuracy"],
        }
    )
    table["gap"] = table["accuracy"] - table["val_accuracy"]
    return table.round(4).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Predictions and the comparison with the published studies
# --------------------------------------------------------------------------------------------

COMPARISON_COLUMNS = [
    "kind",
    "study",
    "task",
    "model",
    "accuracy",
    "macro_f1",
    "accuracy_ci95",
    "data",
    "profile",
    "image_size",
    "epochs",
    "framework",
]


def published_results(study: str | None = None) -> pd.DataFrame:
    """The studies' published test results (``study``: "Study A", "Study B" or None for both), from
    ``resources/published_results.csv`` (Study A: table and text of the paper; Study B: Tabla 1)."""
    table = pd.read_csv(resources.files("wbc").joinpath("resources/published_results.csv")).assign(kind="published")
    return table[table["study"] == study] if study else table


def measured_result(ctx: Any, run_dir: str | Path, metrics: dict, task: str | None = None) -> dict:
    """One row of our own results, with the conditions it was measured under."""
    config = read_config(run_dir)
    epochs = int(config.get("epochs_run", config.get("epochs", 0)))
    low, high = metrics.get("ci95", {}).get("accuracy", (float("nan"), float("nan")))
    data = "demo data (synthetic)" if ctx.is_demo else f"{Path(ctx.data_dir).name}: {', '.join(ctx.datasets)}"
    return {
        "kind": "measured",
        "study": "this course",
        "task": task or ctx.dataset,
        "model": model_label(config),
        "accuracy": round(float(metrics["accuracy"]), 4),
        "macro_f1": round(float(metrics["macro_f1"]), 4),
        "accuracy_ci95": f"{low:.3f}-{high:.3f}",
        "data": f"{data} (test {metrics.get('n_images')})",
        "profile": ctx.profile.name,
        "image_size": config.get("image_size"),
        "epochs": epochs,
        "framework": "Keras / TensorFlow",
    }


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
STUDY_BASELINE = {
    "lr": 1e-3,
    "filters": "6-12-32",
    "kernel_size": "5-3-3",
    "depth": 3,
    "activation": "relu",
    "dropout": 0.0,
}
STUDY_FACTORS = {
    "small": {"lr": [1e-2], "filters": ["12-24-64"], "kernel_size": ["3-3-3"], "depth": [2], "activation": ["tanh"]},
    "full": {
        "lr": [1e-2, 1e-4],
        "filters": ["3-6-16", "12-24-64"],
        "kernel_size": ["3-3-3", "5-5-5"],
        "depth": [1, 2],
        "activation": ["tanh", "elu"],
        "dropout": [0.3, 0.5],
    },
}


def study_settings(profile: Any) -> dict:
    """Grid size for a profile: ``ci`` 32 px, 1 epoch, 1 seed, 6 configurations; else the profile's
    image size and ``study_epochs``, every factor at two values, 2 seeds (``demo``) or 3 (``full``)."""
    if profile.name == "ci":
        return {"image_size": 32, "epochs": profile.study_epochs, "seeds": [0], "factors": STUDY_FACTORS["small"]}
    return {
        "image_size": profile.image_size,
        "epochs": profile.study_epochs,
        "seeds": [0, 1] if profile.name == "demo" else [0, 1, 2],
        "factors": STUDY_FACTORS["full"],
    }
