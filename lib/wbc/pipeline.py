"""tf.data input pipeline: split CSV -> batches of (preprocessed images, one-hot labels).

One code path reads every image the models see (training, evaluation, prediction, Grad-CAM):
``tf.io.read_file`` -> ``tf.io.decode_image`` (RGB) -> resize to ``image_size`` -> uint8 pixels
in [0, 255] -> optional augmentation (training split only, on [0, 255] pixels) -> the
preprocessing the model needs (``PREPROCESSING``) -> float32.

Images stream from disk in parallel and are prefetched; nothing loads the whole split into
memory unless ``cache=True`` is asked for (``cache="file/path"`` caches on disk instead).
TensorFlow is imported inside the functions, so importing this module stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from wbc.errors import WbcError

if TYPE_CHECKING:  # pragma: no cover
    import keras
    import tensorflow as tf

SPLITS = ("train", "val", "test")
#: File types ``tf.io.decode_image`` reads. TIFF is not among them: run ``preprocess`` first.
DECODABLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


def _preprocess_resnet50(x):
    """Keras ResNet50's ``preprocess_input`` ("caffe" mode: RGB -> BGR, ImageNet mean subtracted).

    The ImageNet weights were trained on exactly this input (BGR pixels in [0, 255] minus the
    per-channel ImageNet mean, no scaling), so the pretrained filters only make sense on it.
    Scaling to [0, 1] instead is a common mistake: the network then sees near-constant images.
    """
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input(x)


def _preprocess_unit(x):
    """Scale [0, 255] pixels to [0, 1]: the usual input of small CNNs trained from scratch."""
    return x / 255.0


#: Model input preprocessing by name; ``config.json["preprocessing"]`` stores the name.
PREPROCESSING: dict[str, Callable] = {"resnet50": _preprocess_resnet50, "unit": _preprocess_unit}


def _check_preprocessing(name: str) -> Callable:
    if name not in PREPROCESSING:
        raise WbcError(f"unknown preprocessing {name!r}: choose one of {', '.join(PREPROCESSING)}")
    return PREPROCESSING[name]


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (Study B's settings); set a field to 0/False to switch it off."""

    rotation: float = 20.0  # degrees, either direction
    flip_horizontal: bool = True
    flip_vertical: bool = True
    zoom: float = 0.1  # +-10 %
    brightness: float = 0.1  # +-10 % of the [0, 255] range

    def any(self) -> bool:
        """True when at least one transformation is on."""
        return bool(self.rotation or self.flip_horizontal or self.flip_vertical or self.zoom
                    or self.brightness)


def augmentation_layers(cfg: AugmentConfig | None = None, seed: int = 0) -> "keras.Sequential":
    """Keras preprocessing layers for ``cfg``, applied to [0, 255] pixels before preprocessing.

    Rotation is a fraction of a full turn (20 degrees = 20/360), so ``RandomRotation`` gets
    ``factor=20/360``; ``RandomBrightness`` gets ``value_range=(0, 255)`` because it runs on raw
    pixels, before ``PREPROCESSING`` (whose output range differs per model).
    """
    import keras

    cfg = cfg or AugmentConfig()
    layers: list = []
    if cfg.rotation:
        layers.append(keras.layers.RandomRotation(cfg.rotation / 360.0, fill_mode="reflect",
                                                  seed=seed, name="random_rotation"))
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal",
            (False, True): "vertical"}.get((bool(cfg.flip_horizontal), bool(cfg.flip_vertical)))
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=seed + 1, name="random_flip"))
    if cfg.zoom:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 2,
                                              name="random_zoom"))
    if cfg.brightness:
        layers.append(keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255),
                                                    seed=seed + 3, name="random_brightness"))
    return keras.Sequential(layers, name="augmentation")


def read_classes(split_dir: str | Path) -> list[str]:
    """The class names of a split folder, from ``classes.txt`` (line order = class index)."""
    path = Path(split_dir) / "classes.txt"
    if not path.is_file():
        raise WbcError(f"{path}: missing; a split folder written by `python -m wbc split` has it")
    classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not classes:
        raise WbcError(f"{path}: empty (one class name per line expected)")
    if len(set(classes)) != len(classes):
        raise WbcError(f"{path}: duplicate class names")
    return classes


def load_split(split_dir: str | Path, split: str) -> pd.DataFrame:
    """Read ``<split_dir>/<split>.csv`` (columns at least ``path``, ``label``)."""
    if split not in SPLITS:
        raise WbcError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return _read_csv(Path(split_dir) / f"{split}.csv")


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise WbcError(f"{path}: split CSV not found (run `python -m wbc split` first)")
    df = pd.read_csv(path)
    missing = {"path", "label"} - set(df.columns)
    if missing:
        raise WbcError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    # Relative paths are relative to the CSV's folder, so a split folder can be moved.
    df["path"] = [str(p if Path(p).is_absolute() else (path.parent / p)) for p in df["path"].astype(str)]
    return df


def _frame(source: pd.DataFrame | str | Path) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        if not {"path", "label"} <= set(source.columns):
            raise WbcError("the DataFrame given to make_dataset needs columns 'path' and 'label'")
        return source
    return _read_csv(Path(source))


def check_files(paths: Sequence[str]) -> None:
    """Raise WbcError naming missing files or files TensorFlow cannot decode (checked up front)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise WbcError(f"{len(missing)} image file(s) not found:\n  {shown}{more}")
    odd = [p for p in paths if Path(p).suffix.lower() not in DECODABLE_SUFFIXES]
    if odd:
        raise WbcError(f"{odd[0]}: the input pipeline reads {', '.join(sorted(DECODABLE_SUFFIXES))} "
                       f"files only ({len(odd)} other file(s)); run `python -m wbc preprocess` to "
                       "convert them to JPEG first")


def label_indices(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class index of each label; WbcError naming every label not in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(lab) for lab in labels} - set(index))
    if unknown:
        raise WbcError(f"label(s) not in classes.txt: {', '.join(unknown)} "
                       f"(classes: {', '.join(classes)})")
    return np.array([index[str(lab)] for lab in labels], dtype=np.int32)


def decode_resize(path: "tf.Tensor", image_size: int) -> "tf.Tensor":
    """Read one image file into a uint8 RGB tensor of shape ``[image_size, image_size, 3]``.

    Grayscale and RGBA files become RGB; the image is stretched to a square (the preprocess
    stage already made it square), with antialiasing when shrinking.
    """
    import tensorflow as tf

    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    image.set_shape([image_size, image_size, 3])
    return image


def make_dataset(source: pd.DataFrame | str | Path, classes: list[str], image_size: int,
                 batch_size: int, *, preprocessing: str = "unit",
                 augment: bool | AugmentConfig = False, shuffle: bool = False, seed: int = 0,
                 cache: bool | str = False, drop_remainder: bool = False) -> "tf.data.Dataset":
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches from a split CSV or DataFrame.

    Images: float32 ``[B, image_size, image_size, 3]`` after ``PREPROCESSING[preprocessing]``;
    labels: one-hot float32 ``[B, len(classes)]`` in ``classes`` order. ``augment`` (True or an
    ``AugmentConfig``) is meant for the training split only; ``shuffle`` reshuffles every epoch
    with ``seed``; ``cache=True`` keeps decoded images in memory, ``cache="path"`` on disk.
    Missing files and unknown labels raise WbcError before any image is read.
    """
    import tensorflow as tf

    frame = _frame(source)
    if frame.empty:
        raise WbcError(f"{source if not isinstance(source, pd.DataFrame) else 'DataFrame'}: no images")
    preprocess = _check_preprocessing(preprocessing)
    paths = frame["path"].astype(str).tolist()
    labels = label_indices(frame["label"].astype(str).tolist(), classes)
    check_files(paths)
    n_classes = len(classes)

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle and not cache:  # shuffling file names is cheap: the whole split fits the buffer
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda p, y: (decode_resize(p, image_size), tf.one_hot(y, n_classes)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache(str(cache) if isinstance(cache, (str, Path)) else "")
        if shuffle:
            ds = ds.shuffle(min(len(paths), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    cfg = augment if isinstance(augment, AugmentConfig) else (AugmentConfig() if augment else None)
    if cfg is not None and cfg.any():
        aug = augmentation_layers(cfg, seed=seed)
        # Sequential on purpose: the layers draw from a seeded generator, so a fixed order of
        # batches gives the same augmentations for the same seed.
        ds = ds.map(lambda x, y: (aug(tf.cast(x, tf.float32), training=True), y))
    ds = ds.map(lambda x, y: (tf.cast(preprocess(tf.cast(x, tf.float32)), tf.float32), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _pixel_batches(paths: Sequence[str | Path], image_size: int, batch_size: int = 64):
    import tensorflow as tf

    paths = [str(p) for p in paths]
    check_files(paths)
    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode_resize(p, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return paths, ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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


def load_images(paths: Sequence[str | Path], image_size: int, preprocessing: str) -> np.ndarray:
    """float32 model input ``[N, image_size, image_size, 3]`` for the files (predict, Grad-CAM)."""
    preprocess = _check_preprocessing(preprocessing)
    raw = load_raw_images(paths, image_size)
    return np.asarray(preprocess(raw.astype(np.float32)), dtype=np.float32)


def find_undecodable(paths: Sequence[str | Path], image_size: int = 8) -> list[tuple[str, str]]:
    """``(path, reason)`` for each file that the pipeline cannot read (slow: one at a time)."""
    import tensorflow as tf

    bad = []
    for p in paths:
        try:
            decode_resize(tf.constant(str(p)), image_size)
        except tf.errors.OpError as exc:
            bad.append((str(p), exc.message.splitlines()[0] if exc.message else type(exc).__name__))
    return bad


def raise_if_undecodable(paths: Sequence[str], image_size: int = 8) -> None:
    """Raise WbcError listing every file of ``paths`` that cannot be decoded (if any)."""
    bad = find_undecodable(paths, image_size)
    if bad:
        listing = "\n  ".join(f"{p}: {why}" for p, why in bad[:10])
        raise WbcError(f"{len(bad)} file(s) could not be decoded as images:\n  {listing}")
