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
# (stage, setting, what the paper says, status, what the course does, TrainConfig field or None, reason)

_A = [
    (
        "data",
        "images",
        "PBC + LMU merged into 10 classes, 12,450 images (Table I)",
        "stated",
        "wbc10 (the same class map)",
        None,
        "Table I's per-source sums match the full releases (notebook 03)",
    ),
    (
        "data",
        "balancing",
        "'a balanced set', rule not given; most classes near 1,300, myeloblast 1,764",
        "inferred",
        "per-class cap of 1,300, both sources kept",
        None,
        "a cap near the published counts",
    ),
    (
        "data",
        "format",
        "JPG, resized to 400 x 400; images with a black band removed",
        "stated",
        "OpenCV JPEG (400 px in full); black-band images quarantined",
        None,
        "notebook 05",
    ),
    ("data", "training image size", "128 x 128 RGB", "stated", None, "image_size", "ci/demo shrink it to run on a CPU"),
    ("data", "split", "80 / 12 / 8 with a seed", "stated", "80 / 12 / 8, seeded", None, ""),
    (
        "data",
        "stratification, duplicates",
        "not described",
        "course choice",
        "stratified; duplicate groups kept in one split",
        None,
        "every class in every split, no copy on both sides",
    ),
    (
        "model",
        "backbone",
        "ResNet50 pretrained 'on a large dataset'; only its lower layers",
        "stated",
        "keras.applications.ResNet50, include_top=False",
        None,
        "",
    ),
    (
        "model",
        "backbone weights",
        "pretrained; ImageNet is not named",
        "inferred",
        None,
        "weights",
        "ImageNet is what 'a large dataset' means for ResNet50; offline: random, with a warning",
    ),
    (
        "model",
        "backbone frozen",
        "not stated",
        "inferred",
        "frozen (base.trainable = False)",
        None,
        "the transfer recipe of Chollet's book, the paper's guide",
    ),
    (
        "model",
        "input preprocessing",
        "not stated",
        "course choice",
        "resnet50.preprocess_input in the model",
        None,
        "what Keras' ImageNet weights expect",
    ),
    (
        "model",
        "pooling",
        "not stated",
        "course choice",
        "global average pooling",
        None,
        "Flatten at 128 px would feed 32,768 values to Dense(256): 8.4 M weights",
    ),
    (
        "model",
        "normalisation layer",
        "a normalisation layer after the backbone",
        "stated",
        "BatchNormalization",
        None,
        "",
    ),
    ("model", "dense layer", "256 units, ReLU", "stated", "Dense(256, relu)", None, ""),
    (
        "model",
        "regulariser",
        "'a regulariser to penalise large weights'",
        "stated",
        "kernel_regularizer on the dense layer",
        None,
        "",
    ),
    (
        "model",
        "regulariser type, strength",
        "not stated",
        "course choice",
        "L2, 1e-4",
        None,
        "L2 penalises large weights; 1e-4 is a common strength",
    ),
    ("model", "dropout layer", "a Dropout layer", "stated", "Dropout", None, ""),
    ("model", "dropout rate", "not stated", "course choice", "0.5", None, "the usual default"),
    ("model", "output", "softmax", "stated", "Dense(n_classes, softmax) in float32", None, ""),
    ("training", "framework", "TensorFlow / Keras", "stated", "Keras 3 on TensorFlow", None, ""),
    (
        "training",
        "optimiser",
        "'an optimiser', not named",
        "course choice",
        "Adam",
        None,
        "the usual choice for transfer learning in Keras",
    ),
    (
        "training",
        "learning rate",
        "'a learning rate', value not given",
        "course choice",
        None,
        "lr",
        "Adam's Keras default",
    ),
    (
        "training",
        "loss",
        "the difference between predicted probabilities and labels",
        "inferred",
        "categorical cross-entropy",
        None,
        "the loss for a softmax over one-hot labels",
    ),
    (
        "training",
        "batch size",
        "not stated; about 312 steps per epoch",
        "inferred",
        None,
        "batch_size",
        "9,960 training images (80 % of 12,450) / 312 steps = 32",
    ),
    ("training", "epochs", "10", "stated", None, "epochs", "ci/demo train fewer"),
    ("training", "early stopping", "on validation accuracy, patience 5", "stated", None, "patience", ""),
    (
        "training",
        "fine-tuning phases",
        "one: no layer is said to be unfrozen",
        "inferred",
        None,
        "fine_tune_epochs",
        "the course's main run adds phase 2: stage 5 unfrozen at 1e-5",
    ),
    (
        "training",
        "augmentation",
        "none described",
        "inferred",
        None,
        "augment",
        "the course's main run adds Study B's augmentation",
    ),
    (
        "training",
        "class weights",
        "none; imbalance named as the main limitation",
        "inferred",
        None,
        "class_weights",
        "notebook 11 tries them",
    ),
    (
        "training",
        "weights tested",
        "not stated",
        "course choice",
        "the best validation epoch",
        None,
        "ModelCheckpoint keeps it",
    ),
]
_B = [
    (
        "data",
        "images",
        "Kaggle ALL: 3,256 images of 89 patients, 224 x 224, 4 classes, Original + Segmented",
        "stated",
        "all4",
        None,
        "",
    ),
    (
        "data",
        "version trained on",
        "not stated (the EDA covers both)",
        "course choice",
        "Original only",
        None,
        "a Segmented image shows the same cell as its Original",
    ),
    ("data", "split", "70 / 15 / 15, stratified", "stated", "70 / 15 / 15, stratified, seeded", None, ""),
    (
        "data",
        "duplicates",
        "'no duplicates across sets' found",
        "course choice",
        "duplicate groups kept in one split",
        None,
        "the project's audit of the full release finds 87 groups (notebook 08, section 11)",
    ),
    (
        "data",
        "patients",
        "anonymous: no patient-level split possible (said by the paper)",
        "stated",
        "image-level split",
        None,
        "",
    ),
    ("data", "image size", "224 x 224", "stated", None, "image_size", "ci/demo use their smaller size"),
    ("data", "scaling", "pixels to [0, 1]", "stated", "Rescaling(1/255) inside the model", None, ""),
    (
        "data",
        "augmentation",
        "rotation <= 20 degrees, h + v flips, zoom +-10 %, slight brightness",
        "stated",
        None,
        "augment",
        "",
    ),
    (
        "data",
        "brightness amount",
        "'slight'",
        "course choice",
        "+-10 %",
        None,
        "the same small share as the zoom the study states",
    ),
    ("model", "CNN1", "2 conv (5x5, 3x3) + max pooling + 3 fully connected", "stated", "build_cnn1", None, ""),
    (
        "model",
        "CNN1 widths",
        "not stated",
        "course choice",
        "6, 16 filters; dense 120, 84",
        None,
        "LeNet-5's sizes, the pattern CNN1 follows",
    ),
    ("model", "CNN2", "blocks [6,5,1,0], [12,3,1,0], [32,3,1,1] + 3 dense", "stated", "build_cnn2", None, ""),
    ("model", "CNN2 pooling", "not stated", "inferred", "max pooling after each block", None, "as in CNN1"),
    ("model", "CNN2 dense widths", "not stated", "course choice", "120, 84", None, "as CNN1"),
    (
        "model",
        "activation",
        "not stated (a factor of the study)",
        "course choice",
        "ReLU",
        None,
        "the default of LeNet-style CNNs; notebook 12 varies it",
    ),
    (
        "model",
        "ResNet18",
        "pretrained, last layer replaced by a linear layer for 4 classes, fine-tuned",
        "stated",
        "build_resnet18 (section 5)",
        None,
        "Keras Applications has no ResNet18",
    ),
    (
        "model",
        "ResNet18 weights",
        "ImageNet",
        "stated",
        None,
        "weights",
        "none here: offline, from scratch (KerasHub's resnet_18_imagenet needs a download)",
    ),
    ("model", "layers fine-tuned", "not stated", "inferred", "all", None, "the usual reading of 'fine-tuning'"),
    ("training", "framework", "PyTorch", "stated", "Keras 3 on TensorFlow", None, "a translation"),
    ("training", "optimiser", "not stated", "course choice", "Adam", None, "as in the rest of the course"),
    ("training", "learning rate", "not stated", "course choice", None, "lr", "Adam's Keras default"),
    ("training", "batch size", "not stated", "course choice", None, "batch_size", "the profile's batch size"),
    (
        "training",
        "loss",
        "not stated ('Loss' reported)",
        "inferred",
        "categorical cross-entropy",
        None,
        "the standard multi-class loss",
    ),
    ("training", "epochs", "100", "stated", None, "epochs", "ci/demo train fewer"),
    (
        "training",
        "early stopping",
        "none described: curves over all 100 epochs",
        "inferred",
        None,
        "patience",
        "patience = epochs: EarlyStopping never fires",
    ),
    (
        "training",
        "weights tested",
        "not stated",
        "course choice",
        "the best validation epoch",
        None,
        "ModelCheckpoint keeps it",
    ),
]
FIDELITY = {"A": _A, "B": _B}
COLUMNS = ("stage", "setting", "the paper", "status", "course", "field", "reason")


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
