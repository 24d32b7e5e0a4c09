"""Split folders -> tf.data input: the checks and file handling around notebook 07's pipeline.

The pipeline itself (``decode_resize``, ``augmentation_layers``, ``make_dataset``) is taught in
notebook 07 and generated into ``wbc.lessons``. This module reads split CSVs and
``classes.txt``, checks that every file exists, has a type TensorFlow decodes and a known label
(so a bad file is named before training starts), and feeds ``make_dataset``. Every image a model
sees takes one path: decode, resize, raw RGB pixels into the model, which scales them itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from wbc import runtime
from wbc.checks import read_classes  # noqa: F401 (the one reader of classes.txt, used by the notebooks)
from wbc.config import SPLITS
from wbc.errors import WbcError
from wbc.fileio import read_table

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

#: File types ``tf.io.decode_image`` reads. TIFF is not among them: run ``preprocess`` first.
DECODABLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def load_split(split_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    """Read ``<split_dir>/<split>.csv`` (columns at least ``path``, ``label``; relative paths are
    relative to the split folder, so it can be moved)."""
    if split not in SPLITS:
        raise WbcError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return _read_csv(Path(split_dir) / f"{split}.csv")


def _read_csv(path: str | Path) -> pd.DataFrame:
    return read_table(path, "split CSV", hint="run `python -m wbc split` first", as_text=False, relative_to_folder=True)


def _frame(source: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        if not {"path", "label"} <= set(source.columns):
            raise WbcError("the DataFrame given to make_dataset needs columns 'path' and 'label'")
        return source
    return _read_csv(source)


def check_files(paths: Sequence[str]) -> None:
    """Raise WbcError naming missing files or files TensorFlow cannot decode (checked up front)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise WbcError(f"{len(missing)} image file(s) not found:\n  {shown}{more}")
    odd = [p for p in paths if Path(p).suffix.lower() not in DECODABLE_SUFFIXES]
    if odd:
        raise WbcError(
            f"{odd[0]}: the input pipeline reads {', '.join(sorted(DECODABLE_SUFFIXES))} "
            f"files only ({len(odd)} other file(s)); run `python -m wbc preprocess` to "
            "convert them to JPEG first"
        )


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class index of each label; WbcError naming every label not in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(lab) for lab in labels} - set(index))
    if unknown:
        raise WbcError(f"label(s) not in classes.txt: {', '.join(unknown)} (classes: {', '.join(classes)})")
    return np.array([index[str(lab)] for lab in labels], dtype=np.int32)


def split_dataset(
    source: pd.DataFrame | str | Path,
    classes: list[str],
    image_size: int,
    batch_size: int,
    *,
    augment: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool | str = False,
) -> tf.data.Dataset:
    """``lessons.make_dataset`` (notebook 07) over a split CSV or DataFrame, checked first.

    Batches of float32 RGB pixels in [0, 255] (the models scale them themselves) and one-hot
    labels in ``classes`` order. ``augment=True`` adds notebook 07's augmentation layers (Study
    B's settings). Missing files, unreadable types and unknown labels raise WbcError before any
    image is read.
    """
    lessons = runtime.lessons()
    frame = _frame(source)
    if frame.empty:
        raise WbcError(f"{source if not isinstance(source, pd.DataFrame) else 'DataFrame'}: no images")
    paths = frame["path"].astype(str).tolist()
    labels = label_indices(frame["label"].astype(str).tolist(), classes)
    check_files(paths)
    layers = lessons.augmentation_layers(seed=seed) if augment else None
    return lessons.make_dataset(
        paths, labels, len(classes), image_size, batch_size, augment=layers, shuffle=shuffle, seed=seed, cache=cache
    )


def _pixel_batches(paths: Sequence[str | Path], image_size: int, batch_size: int = 64):
    import tensorflow as tf

    names = [str(p) for p in paths]
    check_files(names)
    decode_resize = runtime.lessons().decode_resize
    ds = tf.data.Dataset.from_tensor_slices(names).map(
        lambda p: decode_resize(p, image_size), num_parallel_calls=tf.data.AUTOTUNE
    )
    return names, ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_raw_images(paths: Sequence[str | Path], image_size: int) -> np.ndarray:
    """uint8 RGB array ``[N, image_size, image_size, 3]`` of the files, for display."""
    import tensorflow as tf

    paths, ds = _pixel_batches(paths, image_size)
    if not paths:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    try:
        return np.concatenate([b.numpy() for b in ds])
    except tf.errors.OpError:
        raise_if_undecodable(paths, image_size)
        raise


def find_undecodable(paths: Sequence[str | Path], image_size: int = 8) -> list[tuple[str, str]]:
    """``(path, reason)`` for each file that the pipeline cannot read (slow: one at a time)."""
    import tensorflow as tf

    bad = []
    for p in paths:
        try:
            runtime.lessons().decode_resize(tf.constant(str(p)), image_size)
        except tf.errors.OpError as exc:
            bad.append((str(p), exc.message.splitlines()[0] if exc.message else type(exc).__name__))
    return bad


def raise_if_undecodable(paths: Sequence[str | Path], image_size: int = 8) -> None:
    """Raise WbcError listing every file of ``paths`` that cannot be decoded (if any)."""
    bad = find_undecodable(paths, image_size)
    if bad:
        listing = "\n  ".join(f"{p}: {why}" for p, why in bad[:10])
        raise WbcError(f"{len(bad)} file(s) could not be decoded as images:\n  {listing}")
