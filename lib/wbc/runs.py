"""Run folders: what a finished training leaves, and when an earlier one may be reused.

A run folder holds ``model.keras`` (the best epoch), ``history.csv`` (Keras' ``CSVLogger``),
``best.weights.h5`` (the checkpoint) and ``config.json``, written last and atomically: its
presence, with ``model.keras``, is the one definition of a complete run (``RUN_FILES``).

Notebooks reuse a run only when it was made by the same settings *and the same code*:
:func:`code_fingerprint` hashes the compiled code of the functions that trained it (and of the
notebook functions they call), so a student who edits a layer or a callback in a notebook cell
gets a new run, never a stale one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from wbc.config import SPLITS
from wbc.errors import WbcError
from wbc.fileio import atomic_path, file_digest, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import keras

RUN_FILES = ("model.keras", "config.json")
RUN_OUTPUTS = ("model.keras", "config.json", "history.csv", "best.weights.h5", "train.log")
_LESSON_MODULES = ("__main__", "wbc.lessons")


def is_complete(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a finished run (``model.keras`` and ``config.json``)."""
    return all((Path(run_dir) / name).is_file() for name in RUN_FILES)


def _source(obj) -> bytes:
    """The source text of a function (IPython keeps a cell's source too), else its compiled code.

    Source, not bytecode: IPython compiles each statement of a cell on its own, and CPython then
    emits other instructions for ``keras.Model(...)`` than in a module that imports ``keras`` at
    the top, so the same function would hash differently in a notebook and in ``wbc.lessons``.
    """
    try:
        return textwrap.dedent(inspect.getsource(obj)).encode()
    except (OSError, TypeError):  # defined by exec() without a source file
        return _code_bytes(obj.__code__)


def _code_bytes(code) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for const in code.co_consts:
        parts.append(_code_bytes(const) if inspect.iscode(const) else repr(const).encode())
    return b"\0".join(parts)


def _names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _names(const)
    return names


def code_fingerprint(*objects: Callable) -> str:
    """A short hash of the code of ``objects`` and of every notebook function they call.

    The source text and the default values count; where the function sits (file, line) does
    not, so a function defined in a notebook cell and its copy in ``wbc.lessons`` agree.
    """
    digest, seen = hashlib.sha256(), set()

    def visit(obj) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if inspect.isclass(obj):
            digest.update(obj.__name__.encode())
            for _, attr in sorted(vars(obj).items()):
                if inspect.isfunction(attr):
                    visit(attr)
            return
        code = obj.__code__
        digest.update(_source(obj) + repr((obj.__defaults__, obj.__kwdefaults__)).encode())
        for name in sorted(_names(code)):
            target = obj.__globals__.get(name)
            if (inspect.isfunction(target) or inspect.isclass(target)) and getattr(
                target, "__module__", ""
            ) in _LESSON_MODULES:
                visit(target)

    for obj in objects:
        visit(obj)
    return digest.hexdigest()[:12]


def split_digests(split_dir: str | Path) -> dict[str, str]:
    """SHA-256 of the split CSVs and ``classes.txt``: what a run was trained and selected on."""
    split_dir = Path(split_dir)
    names = [f"{s}.csv" for s in SPLITS] + ["classes.txt"]
    return {name: file_digest(split_dir / name) for name in names if (split_dir / name).is_file()}


def run_key(settings: dict, code: str) -> str:
    """A folder-safe key for a run made with ``settings`` by code with fingerprint ``code``."""
    text = json.dumps({"settings": settings, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def start_run(run_dir: str | Path, overwrite: bool = False) -> Path:
    """Prepare ``run_dir`` for a new training: refuse a complete run unless ``overwrite``.

    Files of an unfinished run, and the evaluation of a replaced one, are removed.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise WbcError(f"{run_dir}: exists and is not a folder")
    if is_complete(run_dir) and not overwrite:
        raise WbcError(
            f"{run_dir}: already holds a complete run; choose another --out or pass --overwrite to replace it"
        )
    for name in RUN_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "evaluation", ignore_errors=True)  # it described the old model
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def best_epoch(history: pd.DataFrame, phase1_epochs: int) -> dict[str, Any]:
    """Epoch (1-based), phase and validation accuracy of the best epoch in ``history.csv``."""
    row = history.loc[history["val_accuracy"].idxmax()]
    epoch = int(row["epoch"])
    return {
        "best_epoch": epoch,
        "best_phase": 1 if epoch <= phase1_epochs else 2,
        "best_val_accuracy": float(row["val_accuracy"]),
        "epochs_run": int(len(history)),
        "phase1_epochs": int(phase1_epochs),
    }


def finish_run(run_dir: str | Path, model: keras.Model, config: dict, phase1_epochs: int) -> dict:
    """Save ``model.keras``, then ``config.json`` (last: it marks the run complete); returns the config.

    ``config`` holds the settings; the best epoch and its phase are added from ``history.csv``.
    """
    run_dir = Path(run_dir)
    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(tmp)
    history = read_history(run_dir, phase1_epochs)
    config = {**config, **best_epoch(history, phase1_epochs), "params_total": int(model.count_params())}
    write_text_atomic(run_dir / "config.json", json.dumps(config, indent=2, default=str) + "\n")
    return config


def read_history(run_dir: str | Path, phase1_epochs: int | None = None) -> pd.DataFrame:
    """``history.csv`` with epochs counted from 1 and a ``phase`` column (1, or 2 for fine-tuning).

    ``phase1_epochs`` defaults to the run's ``config.json``; without either, every epoch is phase 1.
    """
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise WbcError(f"{path}: missing (the run never finished an epoch)")
    history = pd.read_csv(path)
    history["epoch"] = history["epoch"] + 1  # CSVLogger counts from 0
    if phase1_epochs is None and (Path(run_dir) / "config.json").is_file():
        phase1_epochs = read_config(run_dir).get("phase1_epochs")
    last = phase1_epochs if phase1_epochs is not None else len(history)
    history.insert(0, "phase", [1 if e <= last else 2 for e in history["epoch"]])
    return history


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run folder; WbcError when missing, unreadable or not a JSON object."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise WbcError(
            f"{Path(run_dir)}: incomplete run (config.json missing); the training was "
            "interrupted or failed: train again with --overwrite"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WbcError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise WbcError(f"{path}: not a run configuration (a JSON object is expected)")
    return config


def load_run(run_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """The trained model and ``config.json`` of a run folder; WbcError when incomplete."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WbcError(f"{run_dir}: run folder not found (train one with `python -m wbc train`)")
    config = read_config(run_dir)
    model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise WbcError(f"{run_dir}: incomplete run (model.keras missing): train again with --overwrite")
    import keras

    from wbc import checks, runtime

    checks.check_model_file(model_path)  # a corrupt archive is named as such, not "file not found"
    runtime.lessons()  # registers the notebooks' custom layers before loading
    try:
        model = keras.models.load_model(model_path)
    except Exception as exc:
        raise WbcError(f"{model_path}: corrupt or unreadable model file ({type(exc).__name__}: {exc})") from exc
    return model, config
