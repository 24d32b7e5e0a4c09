"""Checks run before a stage starts: refuse degenerate input with a message that says what to fix.

Each raises ``WbcError`` (the CLI prints it and exits 2) and reads files only (no TensorFlow), so
commands call them before loading a model or training: ``read_classes`` (the one reader of
``classes.txt``), ``check_learning_rate``, ``check_split_folder`` (no image in two splits, no
empty or unknown label), ``check_split_classes`` (a split folder's classes are the run's, in its
order), ``check_model_file`` / ``check_run_dir`` (a complete, readable ``model.keras``, so a
corrupt file is not reported as Keras' "File not found").
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

from wbc.config import SPLITS
from wbc.errors import WbcError

#: Members every Keras 3 ``.keras`` archive holds.
KERAS_MEMBERS = ("metadata.json", "config.json")


def check_learning_rate(value, flag: str = "--lr") -> float:
    """``value`` as a float; WbcError when it is not a finite number above zero."""
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise WbcError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise WbcError(
            f"{flag} must be a finite number above 0 (e.g. 1e-3), got {value!r}: training with it "
            "would not learn (0 or negative) or would fill the model with NaN (inf, nan)"
        )
    return lr


def read_classes(split_dir: str | os.PathLike) -> list[str]:
    """The class names of a split folder, from ``classes.txt`` (one per line, line order = class
    index); refuses blank lines, names listed twice and fewer than two classes."""
    path = Path(split_dir) / "classes.txt"
    if not path.is_file():
        raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WbcError(f"{path}: unreadable ({exc})") from None
    while lines and not lines[-1].strip():  # trailing empty lines are only the file's end
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise WbcError(
            f"{path}: empty class name on line(s) {', '.join(map(str, blank))}; every line names "
            "one class (split the manifest again after giving every image a label)"
        )
    classes = [line.strip() for line in lines]
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise WbcError(f"{path}: class name(s) listed twice: {', '.join(twice)}")
    if len(classes) < 2:
        raise WbcError(
            f"{path}: {len(classes)} class(es) ({', '.join(classes) or 'none'}); a classifier needs at least two"
        )
    return classes


def _overlaps(frames: dict, column: str) -> list[str]:
    seen: dict[str, str] = {}
    lines = []
    for name, df in frames.items():
        for value, path in zip(df[column].astype(str), df["path"].astype(str)):
            other = seen.setdefault(value, name) if value else name
            if other != name:
                lines.append(
                    f"{path} ({other} and {name})"
                    if column == "path"
                    else f"{path} in {name}: same {column} as a file in {other}"
                )
    return lines


def check_split_folder(split_dir: str | os.PathLike, splits: Sequence[str] = ("train", "val")) -> list[str]:
    """Refuse a split folder that would train or evaluate wrongly; returns its classes.

    ``classes.txt`` as ``read_classes`` wants it; ``splits`` (default train and val, which
    training needs) present; every row of every split CSV labelled with a class ``classes.txt``
    names; no image in two of train/val/test: the same path, or the same ``sha256`` where the
    CSVs carry it (a copy in train and test inflates the test score). The files are named.
    """
    from wbc.fileio import read_table

    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise WbcError(f"{split_dir}: split folder not found (write one with `python -m wbc split`)")
    classes = read_classes(split_dir)
    frames = {}
    for name in SPLITS:
        path = split_dir / f"{name}.csv"
        if not path.is_file():
            if name in splits:
                raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
            continue
        df = read_table(path, "split CSV", relative_to_folder=True)
        empty = df.index[df["label"].str.strip() == ""]
        if len(empty):
            raise WbcError(
                f"{path}: {len(empty)} row(s) with an empty label (e.g. "
                f"{', '.join(df.loc[empty[:5], 'path'])}); split the manifest again after giving "
                "every image a label"
            )
        unknown = sorted(set(df["label"]) - set(classes))
        if unknown:
            raise WbcError(f"{path}: label(s) {', '.join(unknown)} not in classes.txt ({', '.join(classes)})")
        frames[name] = df
    leaks = _overlaps(frames, "path")
    if frames and all("sha256" in df.columns for df in frames.values()):
        leaks += _overlaps(frames, "sha256")
    if leaks:
        more = f"\n  ... and {len(leaks) - 10} more" if len(leaks) > 10 else ""
        raise WbcError(
            f"{split_dir}: {len(leaks)} image(s) in more than one split (train, val and test must "
            f"not overlap: the scores would be inflated):\n  "
            + "\n  ".join(leaks[:10])
            + more
            + "\nSplit the manifest again with `python -m wbc split`."
        )
    return classes


def check_split_classes(split_dir: str | os.PathLike, run_dir: str | os.PathLike) -> list[str]:
    """Refuse evaluating a run on a split folder whose classes differ from the run's: the model's
    output ``i`` means ``config["classes"][i]``, so other names, or the same names in another
    order, would score every prediction against the wrong label."""
    from wbc.runs import read_config

    want = read_config(run_dir).get("classes")
    if not isinstance(want, list) or not want:
        raise WbcError(f"{Path(run_dir) / 'config.json'}: no 'classes' list")
    want = [str(c) for c in want]
    path = Path(split_dir) / "classes.txt"
    if not path.is_file():
        raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
    have = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if have != want:
        detail = (
            [f"only in the split folder: {', '.join(sorted(set(have) - set(want)))}"] if set(have) - set(want) else []
        )
        detail += [f"only in the run: {', '.join(sorted(set(want) - set(have)))}"] if set(want) - set(have) else []
        raise WbcError(
            f"{path} does not match the classes the run was trained on ({Path(run_dir) / 'config.json'}): "
            f"{'; '.join(detail or ['same names in another order (the class indices differ)'])}.\n"
            f"  run:   {', '.join(want)}\n  split: {', '.join(have)}\n"
            "Evaluate on a split folder with the same classes.txt."
        )
    return have


def check_model_file(path: str | os.PathLike) -> Path:
    """Refuse a ``model.keras`` that is missing, truncated or corrupt, saying so: the zip archive's
    directory is read and every member's CRC checked (a file cut short by a full disk or an
    interrupted copy is "corrupt", not Keras' misleading "File not found")."""
    path = Path(path)
    if not path.exists():
        raise WbcError(f"{path}: model file not found; the run is incomplete (train again with --overwrite)")
    if not path.is_file():
        raise WbcError(f"{path}: not a file")
    why = None
    try:
        with zipfile.ZipFile(path) as zf:
            lacking = [m for m in KERAS_MEMBERS if m not in set(zf.namelist())]
            bad = None if lacking else zf.testzip()
            if lacking:
                why = f"not a Keras model archive (no {', '.join(lacking)})"
            elif bad is not None:
                why = f"member {bad} is damaged (CRC mismatch)"
    except zipfile.BadZipFile as exc:
        why = f"not a complete zip archive ({exc})"
    except (OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    if why:
        raise WbcError(
            f"{path}: corrupt or unreadable model file: {why}. It was probably cut short (full disk, "
            "interrupted copy); train the run again with --overwrite or restore the file."
        )
    return path


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """A run folder with a readable ``config.json`` and an intact ``model.keras``."""
    from wbc.runs import read_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise WbcError(f"{run_dir}: run folder not found (train one with `python -m wbc train ... --out DIR`)")
    read_config(run_dir)
    check_model_file(run_dir / "model.keras")
    return run_dir
