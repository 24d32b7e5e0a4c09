"""Training from the command line: ``train_model(split_dir, out_dir, TrainConfig(...))``.

It does what notebook 10 does in its cells, with the same code (``wbc.lessons``): configure
the device, build the tf.data pipelines and the model, ``fit_two_phase`` (EarlyStopping,
ModelCheckpoint, CSVLogger; phase 2 for resnet50), then write the run folder (``wbc.runs``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wbc import checks, multiworker, runs, runtime
from wbc.errors import WbcError
from wbc.locking import FolderLock

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger("wbc.train")

#: The dtype policies a run can ask for; "auto" lets ``configure_device`` (notebook 10) pick by hardware.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; ``config.json`` records them all."""

    model: str = "resnet50"
    weights: str | None = None  # resnet50: imagenet (default) | auto | none | PATH; others: none | PATH
    image_size: int = 128
    epochs: int = 10  # phase 1
    batch_size: int = 32
    lr: float = 1e-3
    fine_tune_epochs: int = 0  # resnet50 phase 2: top blocks unfrozen, BatchNorm frozen
    fine_tune_lr: float = 1e-5
    patience: int = 5
    min_epochs: int = 0  # EarlyStopping waits this long: BatchNorm models swing early on
    lr_schedule: str | None = None  # None or "cosine"
    warmup_epochs: int = 0
    augment: bool = True  # Study B's augmentation (notebook 07)
    stain_augment: bool = False  # HED stain jitter of the training images (StainJitter, notebook 13)
    class_weights: bool = False
    reduce_lr: bool = False
    cache: bool = False
    precision: str = "auto"  # dtype policy: auto (by hardware, notebook 10) | float32 | mixed_float16 | mixed_bfloat16
    seed: int = 0
    model_options: tuple = ()  # builder keyword arguments as (name, value) pairs, e.g. (("dropout", 0.3),)

    def check(self, n_classes: int | None = None) -> None:
        """Raise WbcError for settings no training can use (and, given ``n_classes``, for a
        split with fewer than two classes)."""
        from wbc.models import MODEL_NAMES

        if self.model not in MODEL_NAMES:
            raise WbcError(f"unknown model {self.model!r}: choose one of {', '.join(MODEL_NAMES)}")
        if min(self.epochs, self.batch_size, self.image_size) < 1:
            raise WbcError("epochs, batch_size and image_size must be at least 1")
        for name in ("lr", "fine_tune_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WbcError(f"{name} must be a finite number above 0, got {value!r}")
            checks.check_learning_rate(value, name)
        if self.fine_tune_epochs and self.model != "resnet50":
            raise WbcError("fine_tune_epochs applies to resnet50 only (the others train fully from the start)")
        if self.reduce_lr and self.lr_schedule:
            raise WbcError("choose either reduce_lr or lr_schedule, not both (both change the learning rate)")
        if self.precision not in PRECISIONS:
            raise WbcError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.lr_schedule not in (None, "cosine"):
            raise WbcError(f"unknown lr_schedule {self.lr_schedule!r}: use None or 'cosine'")
        if n_classes is not None and n_classes < 2:
            raise WbcError(f"{n_classes} class(es): a classifier needs at least two")

    def as_dict(self) -> dict:
        """The settings as a JSON-ready dict; ``stain_augment`` only when on, so the keys of runs
        made before the option existed (``course.ensure_run``) stay the same."""
        settings = {**asdict(self), "model_options": dict(self.model_options)}
        if not self.stain_augment:
            del settings["stain_augment"]
        return settings


def set_seeds(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and Keras/TensorFlow; ``deterministic`` also asks TF for
    deterministic kernels (slower; identical results on the same machine)."""
    import keras
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def device_summary() -> str:
    """A one-line description of what trains: GPU names or the CPU and its core count."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return f"{len(gpus)} x GPU ({', '.join(details)})"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on."""
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def _learning_rate(lr: float, lr_schedule: str | None, total_steps: int, warmup_steps: int):
    """``lr``, or a cosine decay (after a linear warm-up from lr / 10) over ``total_steps``."""
    import keras

    if lr_schedule is None:
        return lr
    if warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            lr / 10, decay_steps=max(1, total_steps - warmup_steps), warmup_target=lr, warmup_steps=warmup_steps
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    return schedule


def _class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {c: 1.0 for c in range(n_classes) if c not in present}


class _SharedRetracing(logging.Filter):
    """TensorFlow's "N out of the last M calls ... triggered tf.function retracing" counts calls per
    function *code*, which every Keras model's train step shares: a few short trainings in one
    process (notebook 13, a study grid) trip it although each model traces its step only once per
    input shape. Dropped during ``fit`` here; a student's own ``tf.function`` still gets it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "TensorFlowTrainer" in message)


@contextlib.contextmanager
def _no_shared_retracing_warning():
    logger, dropping = logging.getLogger("tensorflow"), _SharedRetracing()
    logger.addFilter(dropping)
    try:
        yield
    finally:
        logger.removeFilter(dropping)


def train_model(
    split_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, *, overwrite: bool = False, verbose: int = 1
) -> Path:
    """Train ``cfg.model`` on a split folder and write a complete run folder at ``out_dir``.

    The saved model is the best epoch by validation accuracy, across both phases; ``config.json``
    says which epoch and phase it is. Refuses to replace a complete run unless ``overwrite``.
    """
    from wbc.checks import read_classes
    from wbc.pipeline import load_split

    cfg.check()
    t_start = time.perf_counter()
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    if not split_dir.is_dir():
        raise WbcError(f"{split_dir}: split folder not found (run `python -m wbc split` first)")
    classes = read_classes(split_dir)  # two or more, or a WbcError naming classes.txt
    checks.check_split_folder(split_dir)  # no image in two splits, no empty label
    train_df, val_df = load_split(split_dir, "train"), load_split(split_dir, "val")
    train = functools.partial(_train, split_dir, cfg=cfg, classes=classes, train_df=train_df, val_df=val_df)
    if not multiworker.is_chief():  # several machines: the other workers train alike, but write elsewhere
        with tempfile.TemporaryDirectory(prefix="wbc-worker-") as scratch:
            train(out_dir=Path(scratch) / out_dir.name, overwrite=True, verbose=0, t_start=t_start)
        return out_dir
    with FolderLock(out_dir, "train"):  # one writer per run folder (re-entrant: the CLI holds it too)
        return train(out_dir=out_dir, overwrite=overwrite, verbose=verbose, t_start=t_start)


def _train(
    split_dir: Path,
    *,
    out_dir: Path,
    cfg: TrainConfig,
    classes: list[str],
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    overwrite: bool,
    verbose: int,
    t_start: float,
) -> Path:
    """The training itself, under the run folder's lock (see :func:`train_model`)."""
    from wbc.models import build_model
    from wbc.pipeline import label_indices, raise_if_undecodable, split_dataset

    weights = cfg.weights or ("imagenet" if cfg.model == "resnet50" else None)
    lessons = runtime.lessons()
    runs.start_run(out_dir, overwrite)

    handler = logging.FileHandler(out_dir / "train.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        set_seeds(cfg.seed)
        strategy = lessons.configure_device(cfg.precision)
        if multiworker.task() is not None:
            multiworker.patch_keras_fit()
        log.info(
            "run %s: %s, %d classes, %d train / %d val images, %s, dtype policy %s (precision=%s), %d replica(s)",
            out_dir,
            cfg.model,
            len(classes),
            len(train_df),
            len(val_df),
            device_summary(),
            keras_policy_name(),
            cfg.precision,
            strategy.num_replicas_in_sync,
        )
        dataset = functools.partial(
            split_dataset,
            classes=classes,
            image_size=cfg.image_size,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            cache=cfg.cache,
        )
        train_ds = dataset(train_df, augment=cfg.augment, shuffle=True)
        if cfg.stain_augment:  # a Keras preprocessing layer on the training batches only
            jitter = lessons.StainJitter(seed=cfg.seed)
            train_ds = train_ds.map(lambda x, y: (jitter(x, training=True), y))  # sequential: seeded
        val_ds = dataset(val_df)
        if multiworker.task() is not None:
            train_ds, val_ds = (multiworker.shard_by_batch(ds, cfg.batch_size) for ds in (train_ds, val_ds))
        steps = int(np.ceil(len(train_df) / cfg.batch_size))
        class_weight = (
            _class_weights(label_indices(train_df["label"].astype(str), classes), len(classes))
            if cfg.class_weights
            else None
        )
        with strategy.scope():
            model = build_model(cfg.model, len(classes), cfg.image_size, weights=weights, **dict(cfg.model_options))
        lr = _learning_rate(cfg.lr, cfg.lr_schedule, cfg.epochs * steps, cfg.warmup_epochs * steps)
        t_fit = time.perf_counter()
        try:
            with strategy.scope(), _no_shared_retracing_warning():  # compile creates the optimizer's variables
                histories = lessons.fit_two_phase(
                    model,
                    train_ds,
                    val_ds,
                    out_dir,
                    epochs=cfg.epochs,
                    lr=lr,
                    fine_tune_epochs=cfg.fine_tune_epochs,
                    fine_tune_lr=cfg.fine_tune_lr,
                    patience=cfg.patience,
                    min_epochs=cfg.min_epochs,
                    reduce_lr=cfg.reduce_lr,
                    class_weight=class_weight,
                    verbose=verbose,
                )
        except Exception as exc:
            import tensorflow as tf

            if isinstance(exc, tf.errors.OpError):  # name the image that broke the input pipeline
                raise_if_undecodable(list(train_df["path"]) + list(val_df["path"]), 8)
            raise
        fit_s = time.perf_counter() - t_fit
        epochs_run = sum(len(h.epoch) for h in histories)
        losses = [v for h in histories for v in h.history.get("loss", [])]
        if not all(math.isfinite(v) for v in losses):
            raise WbcError(
                f"training diverged (loss {losses[-1]}): lower --lr; the run at {out_dir} is left incomplete"
            )
        config = run_config(cfg, split_dir, classes, weights, train_df, val_df)
        config.update(
            elapsed_s=round(time.perf_counter() - t_start, 2),
            fit_seconds=round(fit_s, 2),
            images_per_s=round(len(train_df) * epochs_run / fit_s, 2) if fit_s else None,
            replicas=strategy.num_replicas_in_sync,
        )
        config = runs.finish_run(out_dir, model, config, phase1_epochs=len(histories[0].epoch))
        log.info(
            "run folder: %s (best val_accuracy %.4f at epoch %d, phase %d; %.1f s, %s images/s)",
            out_dir,
            config["best_val_accuracy"],
            config["best_epoch"],
            config["best_phase"],
            config["elapsed_s"],
            config["images_per_s"],
        )
        return out_dir
    finally:
        log.removeHandler(handler)
        handler.close()


def keras_policy_name() -> str:
    """The global Keras dtype policy in force (what ``configure_device`` chose)."""
    import keras

    return keras.mixed_precision.global_policy().name


def run_config(
    cfg: TrainConfig, split_dir: Path, classes: list[str], weights, train_df: pd.DataFrame, val_df: pd.DataFrame
) -> dict:
    """What ``config.json`` records besides the best epoch: settings, data, versions, device."""
    from wbc.preprocess import preprocess_settings

    return {
        "model": cfg.model,
        "classes": classes,
        "n_classes": len(classes),
        "image_size": cfg.image_size,
        "weights": None if weights is None else str(weights),
        "settings": cfg.as_dict(),
        "stain_augment": cfg.stain_augment,
        # how the training images were made (resize mode, colour): predict repeats it
        "preprocess": preprocess_settings(str(train_df["path"].iloc[0])),
        "split_dir": str(Path(split_dir).resolve()),
        "split_sha256": runs.split_digests(split_dir),
        "n_train": len(train_df),
        "n_val": len(val_df),
        "seed": cfg.seed,
        "device": device_summary(),
        "precision_policy": keras_policy_name(),
        "versions": library_versions(),
    }
