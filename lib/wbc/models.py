"""Models by name, and the ResNet50 ImageNet weights.

The architectures are taught in the notebooks and generated into ``wbc.lessons``: CNN1 and
CNN2 (notebook 08), Study A's ResNet50 transfer model (09), the compact ResNet of the CPU recipe
(10). Every model takes raw RGB pixels in [0, 255] and scales them itself (``Rescaling`` or
``ImageNetPreprocess`` layers), and ends in a float32 softmax. This module adds what the
notebooks need not teach: getting the ImageNet weights (with a checksum, never silently
replaced by random ones), loading a weights file, and choosing a builder by name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from wbc import runtime
from wbc.errors import WbcError

if TYPE_CHECKING:  # pragma: no cover
    import keras

MODEL_NAMES = ("resnet50", "cnn1", "cnn2", "small_resnet")
RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP_FILE
RESNET50_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # the hash Keras itself checks


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise WbcError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


def imagenet_cache_path() -> Path:
    """Where Keras keeps the ResNet50 ImageNet weights once downloaded."""
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return base / "models" / RESNET50_NOTOP_FILE


def fetch_imagenet_weights() -> Path:
    """Path of the ResNet50 ImageNet (no-top) weights, downloading them into the Keras cache.

    Raises WbcError naming the URL, the cache path and the alternatives when that fails.
    """
    import keras

    try:
        return Path(
            keras.utils.get_file(
                RESNET50_NOTOP_FILE, RESNET50_NOTOP_URL, cache_subdir="models", file_hash=RESNET50_NOTOP_MD5
            )
        )
    except Exception as exc:  # no network, proxy, bad checksum ...
        raise WbcError(
            f"could not get the ResNet50 ImageNet weights ({type(exc).__name__}: {exc}).\n"
            f"  URL:   {RESNET50_NOTOP_URL}\n"
            f"  cache: {imagenet_cache_path()}\n"
            "Either download that file on a machine with network access and pass its path "
            '(command line: --weights PATH; notebooks: WEIGHTS = "PATH" in the parameters cell), '
            "or copy it to the cache path above; or train from random initialisation, knowingly "
            '(--weights none; WEIGHTS = "none"), and expect much lower accuracy (see the CPU '
            "recipe in README.md)."
        ) from exc


def resolve_weights(weights: str | Path | None) -> str | Path | None:
    """Turn ``"auto"`` into ``"imagenet"`` (cached or downloadable) or ``"none"`` (with a warning).

    Any other value is returned unchanged. Meant for notebooks, which must run without network.
    """
    if weights != "auto":
        return weights
    if imagenet_cache_path().is_file():
        return "imagenet"
    try:
        fetch_imagenet_weights()
        return "imagenet"
    except WbcError as exc:
        cache = imagenet_cache_path()
        if cache not in _WARNED_RANDOM:  # once per process and cache: notebooks resolve "auto" more than once
            _WARNED_RANDOM.add(cache)
            logging.getLogger(__name__).warning(
                f"WARNING: no ImageNet weights ({str(exc.__cause__).split(' -- ')[-1][:100]}): "
                "ResNet50 starts from RANDOM weights, "
                f"so its accuracy stays far below the study's. To use them, copy {RESNET50_NOTOP_FILE} to {cache} "
                "or pass its path as WEIGHTS (notebook 09 explains)."
            )
        return "none"


_WARNED_RANDOM: set[Path] = set()


def _weights_layer_names(path: Path) -> set[str]:
    """Layer names stored in a legacy ``.h5`` or a Keras 3 ``.weights.h5`` file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in group.attrs:  # legacy Keras 2 format (the official ImageNet files)
                return {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]}
            names: set[str] = set()
            f.visit(lambda key: names.update(key.split("/")))
            return names
    except OSError as exc:
        raise WbcError(f"{path}: not a readable HDF5 weights file ({exc})") from exc


def _backbone(model) -> keras.Model:
    """The ResNet50 part of the transfer model (from the input to ``conv5_block3_out``)."""
    import keras

    return keras.Model(model.inputs, model.get_layer("conv5_block3_out").output)


def _load_weights(model, path: Path, backbone: bool) -> None:
    """Load ``path`` into ``model``, or into its ResNet50 backbone when the file holds only that."""
    names = _weights_layer_names(path)
    # Keras 3 files name groups by layer type ("layers/dense"), legacy files by layer name:
    # either way a Dense layer means the file holds a whole model, not the backbone alone.
    whole = not backbone or bool({"head_dense", "dense", "predictions"} & names)
    target = model if whole else _backbone(model)
    try:
        target.load_weights(str(path))
    except Exception as exc:
        what = "the whole model" if whole else "the ResNet50 backbone"
        raise WbcError(
            f"{path}: could not load it as weights of {what} ({exc}); expected the "
            f"official {RESNET50_NOTOP_FILE} or a file saved from this model"
        ) from exc


def weights_file(weights: str | Path | None) -> Path | None:
    """The weights file for ``weights``: ``"imagenet"`` (fetched, checksummed), a path, or None."""
    weights = resolve_weights(weights)
    if weights in (None, "none", "None", ""):
        return None
    if weights == "imagenet":
        return fetch_imagenet_weights()
    path = Path(weights)
    if not path.is_file():
        raise WbcError(f"{path}: weights file not found (use imagenet, none or a path to a .h5 / .weights.h5 file)")
    return path


def build_model(name: str, n_classes: int, image_size: int, weights: str | Path | None = None, **kwargs) -> keras.Model:
    """Build model ``name`` (resnet50 | cnn1 | cnn2 | small_resnet) with the notebooks' builder.

    ``weights``: for resnet50 the backbone's (``imagenet``, ``auto``, ``none`` or a path to the
    official no-top file or to weights saved from this whole model); for the others ``none`` or a
    path to weights saved from the same architecture (``imagenet`` is an error). ``kwargs`` go to
    the builder (``dense_units``, ``dropout``, ``blocks`` ...).
    """
    _check_name(name)
    lessons = runtime.lessons()
    builders = {
        "resnet50": lessons.build_resnet50_transfer,
        "cnn1": lessons.build_cnn1,
        "cnn2": lessons.build_cnn2,
        "small_resnet": lessons.build_small_resnet,
    }
    if name != "resnet50" and weights == "imagenet":
        raise WbcError(
            f"{name} is trained from scratch: there are no ImageNet weights for it "
            "(use --weights none, or --model resnet50)"
        )
    path = weights_file(weights)
    try:
        model = builders[name](n_classes, image_size, **kwargs)
    except TypeError as exc:
        raise WbcError(f"bad option for {name}: {exc}") from exc
    except ValueError as exc:  # e.g. an image too small for the conv stack
        raise WbcError(f"cannot build {name} at image size {image_size}: {exc}") from exc
    if path is not None:
        _load_weights(model, path, backbone=name == "resnet50")
    return model
