"""Training runs: seeds, device set-up, ``train_model`` (writes a run folder) and ``load_run``.

A run folder holds ``model.keras`` (the best epoch's weights by validation accuracy),
``history.csv`` (one row per epoch, with a ``phase`` column), ``config.json`` (every
parameter, classes, preprocessing, library versions, split hashes, device, timing),
``best.weights.h5`` (the checkpoint) and ``train.log``. ``config.json`` is written last and
atomically: its presence marks a complete run.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wbc.errors import WbcError
from wbc.fileio import atomic_path, file_digest, write_csv_atomic, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import tensorflow as tf

RUN_FILES = ("model.keras", "config.json", "history.csv", "best.weights.h5", "train.log")
log = logging.getLogger("wbc.train")


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


def configure_device(mixed_precision: bool | str = "auto") -> "tf.distribute.Strategy":
    """Detect GPUs and return a distribution strategy; warns, never fails.

    GPU: memory growth on, ``mixed_float16`` when ``mixed_precision`` is "auto" or True, and a
    ``MirroredStrategy`` over all GPUs when there are several. CPU: the default strategy, float32.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("No GPU found: training on CPU (fine for the CI/demo profiles and the small models).")
        if mixed_precision is True:
            print("warning: mixed precision requested but it only speeds up GPUs; using float32.")
        keras.mixed_precision.set_global_policy("float32")
        return tf.distribute.get_strategy()
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:  # GPUs already initialised
            print(f"warning: could not enable memory growth on {gpu.name}: {exc}")
    policy = "mixed_float16" if mixed_precision in ("auto", True) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    names = ", ".join(gpu.name for gpu in gpus)
    print(f"{len(gpus)} GPU(s): {names}; precision policy {policy}.")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "pandas": pd.__version__}


def is_complete_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished run (``config.json`` and ``model.keras``)."""
    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and (run_dir / "model.keras").is_file()


def _prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise WbcError(f"{out_dir}: exists and is not a folder")
    if is_complete_run(out_dir):
        if not overwrite:
            raise WbcError(f"{out_dir}: already holds a complete run; choose another --out or "
                           "pass --overwrite to replace it")
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        # Evaluation results of the replaced model would now be wrong: remove them too.
        shutil.rmtree(out_dir / "evaluation", ignore_errors=True)
    elif out_dir.is_dir() and any((out_dir / n).exists() for n in RUN_FILES):
        print(f"note: {out_dir} holds an unfinished run; training again from the start.")
    out_dir.mkdir(parents=True, exist_ok=True)


def _split_hashes(split_dir: Path) -> dict[str, str]:
    return {p.name: file_digest(p) for p in sorted(split_dir.glob("*.csv")) if p.stem in
            ("train", "val", "test")} | (
        {"classes.txt": file_digest(split_dir / "classes.txt")} if (split_dir / "classes.txt").is_file() else {})


def _history_callback(path: Path, phase_of: dict, timing: dict):
    """A callback that rewrites ``history.csv`` after every epoch (phase, epoch, metrics, the
    learning rate the epoch started with, seconds) and records the training (not validation) time of each epoch in ``timing``."""
    import keras

    rows: list[dict[str, Any]] = []

    class History(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()
            self._t_val = None
            self._lr = float(np.asarray(self.model.optimizer.learning_rate))

        def on_test_begin(self, logs=None):
            if getattr(self, "_t0", None) is not None and self._t_val is None:
                self._t_val = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            end = time.perf_counter()
            train_s = (self._t_val or end) - self._t0
            timing.setdefault("train_seconds", []).append(train_s)
            row = {"phase": phase_of["phase"], "epoch": epoch + 1,
                   **{k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"},
                   "learning_rate": self._lr, "seconds": round(end - self._t0, 3)}
            rows.append(row)
            write_csv_atomic(pd.DataFrame(rows), path)
            log.info("phase %s epoch %d: %s", row["phase"], row["epoch"],
                     ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("phase", "epoch")))
            self._t0 = None

    return History()


def _optimizer(lr: float, lr_schedule: str | None, total_steps: int, warmup_steps: int):
    import keras

    if lr_schedule is None:
        return keras.optimizers.Adam(lr)
    if lr_schedule != "cosine":
        raise WbcError(f"unknown lr_schedule {lr_schedule!r}: use None or 'cosine'")
    if warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            lr / 10, decay_steps=max(1, total_steps - warmup_steps), warmup_target=lr,
            warmup_steps=warmup_steps)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps))
    return keras.optimizers.Adam(schedule)


def _class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(n_classes) if c not in present}


def train_model(split_dir: str | Path, model_name: str, out_dir: str | Path, *,
                weights: str | Path | None = None, image_size: int = 128, epochs: int = 10,
                batch_size: int = 32, lr: float = 1e-3, seed: int = 0, fine_tune_epochs: int = 0,
                fine_tune_lr: float = 1e-5, fine_tune_blocks: int | None = None,
                augment: bool = True, class_weights: bool = False, reduce_lr: bool = False,
                patience: int = 5, min_epochs: int = 0, lr_schedule: str | None = None,
                warmup_epochs: int = 0, cache: bool | str = False,
                mixed_precision: bool | str = "auto", deterministic: bool = False,
                overwrite: bool = False, verbose: int = 1, **model_kwargs) -> Path:
    """Train ``model_name`` on a split folder and write a run folder at ``out_dir``; returns it.

    Adam + categorical cross-entropy; EarlyStopping on val_accuracy (``patience``; not before
    epoch ``min_epochs``, because BatchNorm models swing wildly early on), a best-epoch
    checkpoint (the saved model is the best epoch, across both phases), optional
    ReduceLROnPlateau, balanced class weights and cosine decay (with ``warmup_epochs``). For
    resnet50, ``fine_tune_epochs`` > 0 adds phase 2: ``unfreeze_top`` (``fine_tune_blocks``,
    default stage 5) at ``fine_tune_lr``. Refuses to replace a complete run unless ``overwrite``.
    """
    import keras

    from wbc.models import build_model, model_preprocessing, unfreeze_top
    from wbc.pipeline import load_split, make_dataset, read_classes, label_indices

    t_start = time.perf_counter()
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()
              if k not in ("keras", "build_model", "model_preprocessing", "unfreeze_top", "load_split",
                           "make_dataset", "read_classes", "label_indices", "t_start", "model_kwargs")}
    params.update(model_kwargs)
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    if not split_dir.is_dir():
        raise WbcError(f"{split_dir}: split folder not found (run `python -m wbc split` first)")
    preprocessing = model_preprocessing(model_name)  # validates the name early
    if fine_tune_epochs and model_name != "resnet50":
        raise WbcError("fine_tune_epochs applies to resnet50 only (the others train fully from the start)")
    if reduce_lr and lr_schedule:
        raise WbcError("choose either reduce_lr or lr_schedule, not both (both change the learning rate)")
    if min(epochs, batch_size, image_size) < 1:
        raise WbcError("epochs, batch_size and image_size must be at least 1")
    if model_name == "resnet50" and weights is None:
        weights = "imagenet"
    classes = read_classes(split_dir)
    train_df, val_df = load_split(split_dir, "train"), load_split(split_dir, "val")
    _prepare_run_dir(out_dir, overwrite)

    handler = logging.FileHandler(out_dir / "train.log", mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        set_seeds(seed, deterministic)
        strategy = configure_device(mixed_precision)
        device = device_summary()
        log.info("run %s: model %s, %d classes, %d train / %d val images, %s", out_dir, model_name,
                 len(classes), len(train_df), len(val_df), device)
        ds_args = dict(classes=classes, image_size=image_size, batch_size=batch_size,
                       preprocessing=preprocessing, seed=seed)
        train_ds = make_dataset(train_df, augment=augment, shuffle=True, cache=cache, **ds_args)
        val_ds = make_dataset(val_df, cache=bool(cache), **ds_args)
        steps = int(np.ceil(len(train_df) / batch_size))
        fit_args: dict[str, Any] = {"verbose": verbose, "shuffle": False}  # the dataset shuffles
        if class_weights:
            fit_args["class_weight"] = _class_weights(label_indices(train_df["label"].astype(str), classes),
                                                      len(classes))
            log.info("class weights: %s", fit_args["class_weight"])

        with strategy.scope():
            model = build_model(model_name, len(classes), image_size, weights=weights, **model_kwargs)
            model.compile(optimizer=_optimizer(lr, lr_schedule, epochs * steps, warmup_epochs * steps),
                          loss="categorical_crossentropy", metrics=["accuracy"])
        phase = {"phase": 1}
        timing: dict[str, list[float]] = {}
        best_path = out_dir / "best.weights.h5"
        checkpoint = keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_accuracy", mode="max",
                                                     save_best_only=True, save_weights_only=True)
        history_cb = _history_callback(out_dir / "history.csv", phase, timing)

        def callbacks() -> list:
            cbs = [history_cb, checkpoint, keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True,
                start_from_epoch=min_epochs, verbose=min(verbose, 1))]
            if reduce_lr:
                cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                             patience=max(1, patience // 2), min_lr=1e-6))
            return cbs

        try:
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks(), **fit_args)
            epochs_run = len(timing.get("train_seconds", []))
            if fine_tune_epochs:
                phase["phase"] = 2
                unfrozen = unfreeze_top(model, n_blocks=fine_tune_blocks)
                log.info("phase 2: %d layers unfrozen (backbone BatchNorm kept frozen), lr %g",
                         len(unfrozen), fine_tune_lr)
                with strategy.scope():
                    model.compile(optimizer=keras.optimizers.Adam(fine_tune_lr),
                                  loss="categorical_crossentropy", metrics=["accuracy"])
                model.fit(train_ds, validation_data=val_ds, initial_epoch=epochs_run,
                          epochs=epochs_run + fine_tune_epochs, callbacks=callbacks(), **fit_args)
        except Exception as exc:
            import tensorflow as tf

            if isinstance(exc, tf.errors.OpError):  # name the image that broke the input pipeline
                from wbc.pipeline import raise_if_undecodable

                raise_if_undecodable(list(train_df["path"]) + list(val_df["path"]), 8)
            raise
        # EarlyStopping already restored the best epoch of the last phase; the checkpoint is
        # needed when an earlier phase, or an epoch before min_epochs, was better.
        if best_path.is_file() and (fine_tune_epochs or min_epochs):
            model.load_weights(str(best_path))
        with atomic_path(out_dir / "model.keras") as tmp:
            model.save(tmp)

        history = pd.read_csv(out_dir / "history.csv")
        train_s = float(sum(timing.get("train_seconds", [])))
        n_seen = len(train_df) * len(history)
        config = {
            "model": model_name, "classes": classes, "n_classes": len(classes),
            "image_size": image_size, "preprocessing": preprocessing,
            # how the training images were made (resize mode, colour): predict repeats it
            "preprocess": _preprocess_settings(train_df["path"].iloc[0]),
            "weights": str(weights) if weights is not None else None,
            "parameters": params, "split_dir": str(split_dir.resolve()),
            "split_sha256": _split_hashes(split_dir),
            "n_train": len(train_df), "n_val": len(val_df), "seed": seed,
            "epochs_run": int(len(history)),
            "best_epoch": int(history.loc[history["val_accuracy"].idxmax(), "epoch"]),
            "best_val_accuracy": float(history["val_accuracy"].max()),
            "params_total": int(model.count_params()), "device": device,
            "precision_policy": keras.mixed_precision.global_policy().name,
            "versions": library_versions(), "elapsed_s": round(time.perf_counter() - t_start, 2),
            "train_seconds": round(train_s, 2),
            "images_per_s": round(n_seen / train_s, 2) if train_s else None,
            # without the first epoch, which also builds the graph
            "images_per_s_steady": (round(len(train_df) * (len(history) - 1) / sum(timing["train_seconds"][1:]), 2)
                                    if len(timing.get("train_seconds", [])) > 1 else None),
        }
        write_text_atomic(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
        log.info("done: best val_accuracy %.4f at epoch %d; %.1f s, %.1f images/s; %s",
                 config["best_val_accuracy"], config["best_epoch"], config["elapsed_s"],
                 config["images_per_s"] or 0, out_dir)
        if verbose:
            print(f"run folder: {out_dir} (best val_accuracy {config['best_val_accuracy']:.4f} "
                  f"at epoch {config['best_epoch']}, {config['images_per_s']} images/s)")
        return out_dir
    finally:
        log.removeHandler(handler)
        handler.close()


def _preprocess_settings(image_path: str) -> dict | None:
    from wbc.preprocess import preprocess_settings

    return preprocess_settings(image_path)


def load_run(run_dir: str | Path) -> tuple["keras.Model", dict]:
    """The trained model and ``config.json`` of a run folder; WbcError when incomplete."""
    import keras

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WbcError(f"{run_dir}: run folder not found (train one with `python -m wbc train`)")
    config_path, model_path = run_dir / "config.json", run_dir / "model.keras"
    if not model_path.is_file() or not config_path.is_file():
        missing = [p.name for p in (model_path, config_path) if not p.is_file()]
        raise WbcError(f"{run_dir}: incomplete run ({', '.join(missing)} missing); the training "
                       "was interrupted or failed: train again with --overwrite")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WbcError(f"{config_path}: not valid JSON ({exc})") from exc
    try:
        model = keras.models.load_model(model_path)
    except Exception as exc:
        raise WbcError(f"{model_path}: could not load the model ({exc})") from exc
    return model, config
