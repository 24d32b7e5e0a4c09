"""Checks run before a stage starts: refuse degenerate input with a message that says what to fix.

Each function raises ``WbcError`` (the CLI prints it and exits with status 2) and returns
quietly when all is well. They read files only (no TensorFlow), so commands call them before
loading a model or training:

- ``check_learning_rate(value, flag)``: finite and positive;
- ``check_split_folder(split_dir)``: ``classes.txt`` with at least two non-empty, distinct
  class names; no file (path, or SHA-256 where recorded) in more than one of train/val/test;
  no empty label in the CSVs;
- ``check_split_classes(split_dir, run_dir)``: a split folder's ``classes.txt`` equals the
  run's ``config.json`` ``classes`` (same names, same order = same class indices);
- ``check_model_file(path)``: ``model.keras`` is a complete, readable Keras archive, so a corrupt
  file is reported as such and not as "File not found".
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Sequence

from wbc.errors import WbcError

SPLITS = ("train", "val", "test")
#: Members every Keras 3 ``.keras`` archive holds.
KERAS_MEMBERS = ("metadata.json", "config.json")


def check_learning_rate(value, flag: str = "--lr") -> float:
    """``value`` as a float; WbcError when it is not a finite number above zero."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise WbcError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise WbcError(f"{flag} must be a finite number above 0 (e.g. 1e-3), got {value!r}: "
                       "training with it would not learn (0 or negative) or would fill the "
                       "model with NaN (inf, nan)")
    return lr


def read_classes_file(split_dir: str | os.PathLike) -> list[str]:
    """The class names of ``split_dir/classes.txt`` (one per line), refusing blank lines,
    duplicates and fewer than two classes."""
    path = Path(split_dir) / "classes.txt"
    if not path.is_file():
        raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WbcError(f"{path}: unreadable ({exc})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing empty lines are only the file's end
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise WbcError(f"{path}: empty class name on line(s) {', '.join(map(str, blank))}; every line "
                       "names one class (split the manifest again after giving every image a label)")
    classes = [line.strip() for line in lines]
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise WbcError(f"{path}: class name(s) listed twice: {', '.join(twice)}")
    if len(classes) < 2:
        raise WbcError(f"{path}: {len(classes)} class(es) ({', '.join(classes) or 'none'}); a classifier "
                       "needs at least two")
    return classes


def _read_split_csv(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise WbcError(f"{path}: not a readable split CSV ({exc})") from None
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise WbcError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    # relative paths are relative to the CSV's folder (as the input pipeline reads them)
    df["path"] = [p if os.path.isabs(p) else os.path.normpath(os.path.join(path.parent, p))
                  for p in df["path"].astype(str)]
    return df


def _overlaps(frames: dict, column: str) -> list[str]:
    seen: dict[str, str] = {}
    lines = []
    for name, df in frames.items():
        for value, path in zip(df[column].astype(str), df["path"].astype(str)):
            if not value:
                continue
            other = seen.setdefault(value, name)
            if other != name:
                lines.append(f"{path} ({other} and {name})" if column == "path"
                             else f"{path} in {name}: same {column} as a file in {other}")
    return lines


def check_split_folder(split_dir: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> list[str]:
    """Refuse a split folder that would train or evaluate wrongly; returns its classes.

    ``classes.txt`` must name at least two distinct classes, one per line, with no empty
    line. ``splits`` (default train and val, which training needs) must exist; every split
    CSV present must give every row a label that ``classes.txt`` names, and no image may sit
    in two of train/val/test: the same path, or the same ``sha256`` where the CSVs carry it
    (a copy of one image in train and test inflates the test score). The files are named.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise WbcError(f"{split_dir}: split folder not found (write one with `python -m wbc split`)")
    classes = read_classes_file(split_dir)
    frames = {}
    for name in SPLITS:
        path = split_dir / f"{name}.csv"
        if not path.is_file():
            if name in splits:
                raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
            continue
        df = _read_split_csv(path)
        empty = df.index[df["label"].astype(str).str.strip() == ""]
        if len(empty):
            shown = ", ".join(df.loc[empty[:5], "path"])
            raise WbcError(f"{path}: {len(empty)} row(s) with an empty label (e.g. {shown}); "
                           "split the manifest again after giving every image a label")
        unknown = sorted(set(df["label"].astype(str)) - set(classes))
        if unknown:
            raise WbcError(f"{path}: label(s) {', '.join(unknown)} not in classes.txt "
                           f"({', '.join(classes)})")
        frames[name] = df
    leaks = _overlaps(frames, "path")
    if all("sha256" in df.columns for df in frames.values()) and frames:
        leaks += _overlaps(frames, "sha256")
    if leaks:
        shown = "\n  ".join(leaks[:10])
        more = f"\n  ... and {len(leaks) - 10} more" if len(leaks) > 10 else ""
        raise WbcError(f"{split_dir}: {len(leaks)} image(s) in more than one split (train, val and "
                       f"test must not overlap: the scores would be inflated):\n  {shown}{more}\n"
                       "Split the manifest again with `python -m wbc split`.")
    return classes


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """``run_dir/config.json`` as a dict (WbcError when missing or not JSON)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise WbcError(f"{path}: missing; the run is incomplete (train again with --overwrite)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WbcError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise WbcError(f"{path}: not a run configuration (a JSON object is expected)")
    return config


def check_split_classes(split_dir: str | os.PathLike, run_dir: str | os.PathLike) -> list[str]:
    """Refuse evaluating a run on a split folder whose classes differ from the run's.

    The model's output ``i`` means ``config["classes"][i]``; a ``classes.txt`` with other names,
    or the same names in another order, would score every prediction against the wrong label.
    """
    config = read_run_config(run_dir)
    want = config.get("classes")
    if not isinstance(want, list) or not want:
        raise WbcError(f"{Path(run_dir) / 'config.json'}: no 'classes' list")
    path = Path(split_dir) / "classes.txt"
    if not path.is_file():
        raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
    have = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if have != [str(c) for c in want]:
        only_split = sorted(set(have) - set(map(str, want)))
        only_run = sorted(set(map(str, want)) - set(have))
        detail = []
        if only_split:
            detail.append(f"only in the split folder: {', '.join(only_split)}")
        if only_run:
            detail.append(f"only in the run: {', '.join(only_run)}")
        if not detail:
            detail.append("same names in another order (the class indices differ)")
        raise WbcError(f"{path} does not match the classes the run was trained on "
                       f"({Path(run_dir) / 'config.json'}): {'; '.join(detail)}.\n"
                       f"  run:   {', '.join(map(str, want))}\n  split: {', '.join(have)}\n"
                       "Evaluate on a split folder with the same classes.txt.")
    return have


def check_model_file(path: str | os.PathLike) -> Path:
    """Refuse a ``model.keras`` that is missing, truncated or corrupt, saying so.

    A ``.keras`` file is a zip archive (``metadata.json``, ``config.json``, the weights). The
    archive's directory is read and every member's CRC checked, so a file cut short by a full
    disk or an interrupted copy is reported as "corrupt or unreadable model file", not as
    Keras' misleading "File not found".
    """
    path = Path(path)
    if not path.exists():
        raise WbcError(f"{path}: model file not found; the run is incomplete (train again with --overwrite)")
    if not path.is_file():
        raise WbcError(f"{path}: not a file")
    why = None
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            lacking = [m for m in KERAS_MEMBERS if m not in names]
            if lacking:
                why = f"not a Keras model archive (no {', '.join(lacking)})"
            else:
                bad = zf.testzip()
                if bad is not None:
                    why = f"member {bad} is damaged (CRC mismatch)"
    except zipfile.BadZipFile as exc:
        why = f"not a complete zip archive ({exc})"
    except (OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    if why:
        raise WbcError(f"{path}: corrupt or unreadable model file: {why}. It was probably cut short "
                       "(full disk, interrupted copy); train the run again with --overwrite or "
                       "restore the file.")
    return path


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """A run folder with a readable ``config.json`` and an intact ``model.keras``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WbcError(f"{run_dir}: run folder not found (train one with `python -m wbc train ... --out DIR`)")
    read_run_config(run_dir)
    check_model_file(run_dir / "model.keras")
    return run_dir
