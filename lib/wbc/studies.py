"""The two studies as published: their recipes as ``TrainConfig``s, and where each setting comes from.

- :func:`study_a_config`: Study A's ResNet50 recipe as its paper describes it (one phase, frozen
  backbone, no augmentation, 10 epochs, EarlyStopping patience 5), beside the course's main run
  (``course.main_run_config``: two phases, Study B's augmentation).
- :func:`study_b_config`: Study B's recipe for ``cnn1``, ``cnn2`` and ``resnet18`` (224 px,
  Study B's augmentation, 100 epochs, no early stopping).
- :func:`fidelity_table`: one row per setting, marked *stated* by the study, *inferred* from it, or
  a *course choice*, with the reason; columns with the values of the configs you pass.
- :func:`run_folder` / :func:`ensure_run`: as in ``wbc.course``, plus Study B's ResNet18, which
  notebook 08 writes and the command line does not build.

The ``ci`` and ``demo`` profiles cannot run the published budgets on a CPU: there the image size
and the epochs are the profile's (never more than the study's), and every notebook says so.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import pandas as pd

from wbc import course

STATUSES = ("stated", "inferred", "course choice")
STUDY_A = {"image_size": 128, "epochs": 10, "patience": 5, "batch_size": 32}  # batch: inferred (312 steps)
STUDY_B = {"image_size": 224, "epochs": 100}
EXTRA_BUILDERS = {"resnet18": "build_resnet18"}  # models the notebooks train that the CLI does not build
log = logging.getLogger(__name__)


def _budget(ctx, published: int, profile_value: int) -> int:
    """The published value with the ``full`` profile; otherwise the profile's, capped at the published."""
    return published if ctx.profile.name == "full" else min(published, profile_value)


def study_a_config(ctx, **overrides):
    """Study A's recipe: ResNet50 (frozen, ImageNet when available), one phase, no augmentation,
    EarlyStopping on val accuracy with patience 5, 10 epochs (ci/demo: the profile's epochs and
    image size). Optimiser and learning rate are not stated: Adam at the profile's rate (1e-3).
    ``None`` overrides are ignored; ``weights="auto"`` is resolved as in ``course.main_run_config``.
    """
    p = ctx.profile
    settings = {
        "epochs": _budget(ctx, STUDY_A["epochs"], p.epochs),
        "image_size": _budget(ctx, STUDY_A["image_size"], p.image_size),
        "batch_size": STUDY_A["batch_size"] if p.name == "full" else p.batch_size,
        "fine_tune_epochs": 0,
        "patience": STUDY_A["patience"],
        "min_epochs": 0,
        "augment": False,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    return course.main_run_config(ctx, **settings)


def study_b_config(ctx, model: str, **overrides):
    """Study B's recipe for ``cnn1``, ``cnn2`` or ``resnet18``: 224 px, Study B's augmentation,
    100 epochs with no early stopping (``patience`` = epochs, so EarlyStopping never fires), from
    scratch (Study B fine-tuned an ImageNet ResNet18, which Keras does not ship). ci/demo: the
    profile's image size and ``cnn_epochs``. Optimiser, learning rate and batch size are not
    stated: Adam at the profile's rate and batch. ``None`` overrides are ignored.
    """
    from wbc.train import TrainConfig

    p = ctx.profile
    settings = {
        "model": model,
        "weights": "none",
        "image_size": _budget(ctx, STUDY_B["image_size"], p.image_size),
        "epochs": _budget(ctx, STUDY_B["epochs"], p.cnn_epochs),
        "batch_size": p.batch_size,
        "lr": p.learning_rate,
        "min_epochs": 0,
        "augment": True,
        "seed": ctx.seed,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    settings.setdefault("patience", settings["epochs"])  # no early stopping: it can never fire
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- fidelity

COLUMNS = ("stage", "setting", "the paper", "status", "course", "field", "reason")


def _fidelity_rows() -> dict[str, list[tuple]]:
    """``resources/fidelity.csv``: per study, one row per setting: (stage, setting, what the paper
    says, status, what the course does, the TrainConfig field that holds it or None, reason)."""
    table = pd.read_csv(resources.files("wbc").joinpath("resources/fidelity.csv"), dtype=str, keep_default_na=False)
    rows: dict[str, list[tuple]] = {}
    for study, stage, setting, paper, status, course_text, field, reason in table.itertuples(index=False):
        rows.setdefault(study, []).append((stage, setting, paper, status, course_text, field or None, reason))
    return rows


FIDELITY = _fidelity_rows()


def fidelity_table(study: str, stages=None, configs: dict | None = None) -> pd.DataFrame:
    """Study ``"A"`` or ``"B"``: one row per setting (optionally only ``stages``), with one column per
    entry of ``configs`` (``{column name: TrainConfig}``) holding that config's value of the row's
    field; rows without a field show what the course does, the same for every config."""
    table = pd.DataFrame(FIDELITY[study], columns=list(COLUMNS))
    if stages:
        table = table[table["stage"].isin(stages)]
    for name, cfg in (configs or {}).items():
        table[name] = [
            str(getattr(cfg, f)) if isinstance(f, str) else c for f, c in zip(table["field"], table["course"])
        ]
    if configs:
        table = table.drop(columns="course")
    return table.drop(columns="field").set_index("setting")


# ----------------------------------------------------------------------------- runs


def training_code(model: str, namespace: dict | None = None) -> str:
    """``course.training_code``, also for the models only the notebooks build (``resnet18``)."""
    if model not in EXTRA_BUILDERS:
        return course.training_code(model, namespace)
    from wbc import runs
    from wbc.runtime import lessons

    names = (*course.TRAINING_CODE, EXTRA_BUILDERS[model])
    return runs.code_fingerprint(*[(namespace or {}).get(n) or getattr(lessons(), n) for n in names])


def run_folder(ctx, name: str, cfg, split_dir: Path, namespace: dict | None = None) -> Path:
    """``<work_dir>/runs/<name>-<key>``: the key changes with the settings, the split and the code."""
    return course.run_folder(ctx, name, cfg, split_dir, training_code(cfg.model, namespace))


def ensure_run(ctx, name: str, cfg, split_dir: Path, namespace: dict | None = None) -> Path:
    """``course.ensure_run``, and for ``resnet18`` the same steps here (the CLI does not build it):
    reuse a complete run with the same key, else train it with ``wbc.lessons`` and save it."""
    if cfg.model not in EXTRA_BUILDERS:
        return course.ensure_run(ctx, name, cfg, split_dir, namespace)
    from wbc import runs, train
    from wbc.pipeline import load_split, read_classes, split_dataset
    from wbc.runtime import lessons

    run_dir = run_folder(ctx, name, cfg, split_dir, namespace)
    if runs.is_complete(run_dir):
        log.info(f"{name}: reusing {run_dir} (same settings, split and code)")
        return run_dir
    log.info(f"{name}: training {cfg.model} into {run_dir} ...")
    runs.start_run(run_dir, overwrite=True)
    classes, frames = read_classes(split_dir), [load_split(split_dir, s) for s in ("train", "val")]
    train.set_seeds(cfg.seed)
    strategy = lessons().configure_device()
    args = {"classes": classes, "image_size": cfg.image_size, "batch_size": cfg.batch_size, "seed": cfg.seed}
    train_ds = split_dataset(frames[0], augment=cfg.augment, shuffle=True, **args)
    val_ds = split_dataset(frames[1], **args)
    with strategy.scope():
        model = getattr(lessons(), EXTRA_BUILDERS[cfg.model])(len(classes), cfg.image_size, **dict(cfg.model_options))
    histories = lessons().fit_two_phase(
        model,
        train_ds,
        val_ds,
        run_dir,
        epochs=cfg.epochs,
        lr=cfg.lr,
        patience=cfg.patience,
        min_epochs=cfg.min_epochs,
        verbose=0,
    )
    config = runs.finish_run(
        run_dir,
        model,
        train.run_config(cfg, split_dir, classes, cfg.weights, *frames),
        phase1_epochs=len(histories[0].epoch),
    )
    log.info(f"{name}: done, best val_accuracy {config['best_val_accuracy']:.3f} at epoch {config['best_epoch']}")
    return run_dir


def describe(config: dict) -> str:
    """A run's model and recipe in words, from its ``config.json``: "ResNet50, random init; Study A's
    recipe (1 phase, no augmentation)"."""
    from wbc.experiments import model_label

    s = config.get("settings", {})
    name = "ResNet18, random init" if config.get("model") == "resnet18" else model_label(config)
    if config.get("model") == "resnet50":
        recipe = (
            "Study A's recipe (1 phase, no augmentation)"
            if not s.get("fine_tune_epochs") and not s.get("augment")
            else f"course recipe ({2 if s.get('fine_tune_epochs') else 1} phase(s), "
            f"{'with' if s.get('augment') else 'no'} augmentation)"
        )
    else:
        recipe = (
            "Study B's recipe (no early stopping)"
            if s.get("patience", 0) >= s.get("epochs", 1)
            else "course recipe (early stopping)"
        )
    return f"{name}; {recipe}" + ("; class weights" if s.get("class_weights") else "")
