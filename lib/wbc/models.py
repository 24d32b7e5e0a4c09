"""Models: ResNet50 transfer learning (Study A), CNN1 and CNN2 (Study B), a compact ResNet.

Every model ends in a float32 softmax (safe under mixed precision) and takes RGB images of
``image_size`` x ``image_size`` prepared with ``model_preprocessing(name)``. The ResNet50
model is *flat*: the backbone's layers live directly in the model, so Grad-CAM can reach
``conv5_block3_out``. Keras is imported inside the functions.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from wbc.errors import WbcError

if TYPE_CHECKING:  # pragma: no cover
    import keras

MODEL_NAMES = ("resnet50", "cnn1", "cnn2", "small_resnet")
RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                      + RESNET50_NOTOP_FILE)
RESNET50_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # the hash Keras itself checks
HEAD_LAYERS = ("head_bn", "head_dense", "head_dropout", "predictions")
_BLOCK = re.compile(r"^(conv\d_block\d+)_")
# Every ResNet50 backbone layer is named conv1_*, convN_blockM_* or poolN_*; head layers are not.
_BACKBONE_LAYER = re.compile(r"^(conv\d|pool\d)_")


def model_preprocessing(name: str) -> str:
    """The input preprocessing a model needs: ``"resnet50"`` (ImageNet caffe mode) or ``"unit"``."""
    _check_name(name)
    return "resnet50" if name == "resnet50" else "unit"


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise WbcError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")


def imagenet_cache_path() -> Path:
    """Where Keras keeps the ResNet50 ImageNet weights once downloaded."""
    import os

    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return base / "models" / RESNET50_NOTOP_FILE


def fetch_imagenet_weights() -> Path:
    """Path of the ResNet50 ImageNet (no-top) weights, downloading them into the Keras cache.

    Raises WbcError naming the URL, the cache path and the alternatives when that fails.
    """
    import keras

    try:
        return Path(keras.utils.get_file(RESNET50_NOTOP_FILE, RESNET50_NOTOP_URL,
                                         cache_subdir="models", file_hash=RESNET50_NOTOP_MD5))
    except Exception as exc:  # no network, proxy, bad checksum ...
        raise WbcError(
            f"could not get the ResNet50 ImageNet weights ({type(exc).__name__}: {exc}).\n"
            f"  URL:   {RESNET50_NOTOP_URL}\n"
            f"  cache: {imagenet_cache_path()}\n"
            "Either download that file on a machine with network access and pass its path "
            "(command line: --weights PATH; notebooks: WEIGHTS = \"PATH\" in the parameters cell), "
            "or copy it to the cache path above; or train from random initialisation, knowingly "
            "(--weights none; WEIGHTS = \"none\"), and expect much lower accuracy (see the CPU "
            "recipe in README.md).") from exc


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
        bar = "!" * 78
        print(f"{bar}\nWARNING: ImageNet weights unavailable, so ResNet50 starts from RANDOM "
              f"weights.\n{exc}\nResults will be far below the study's; this is expected here."
              f"\n{bar}", file=sys.stderr, flush=True)
        return "none"


def _dense_head(x, n_classes: int, *, dense_units: int, dropout: float, l2: float,
                activation: str = "relu"):
    import keras

    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.Dense(dense_units, activation=activation, name="head_dense",
                           kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)


def build_resnet50_transfer(n_classes: int, image_size: int = 128,
                            weights: str | Path | None = "imagenet", dropout: float = 0.5,
                            l2: float = 1e-4, dense_units: int = 256) -> "keras.Model":
    """Study A's model: ResNet50 (no top, global average pooling) -> BatchNorm -> Dense(relu, L2)
    -> Dropout -> Dense(softmax). The backbone starts frozen (see ``unfreeze_top``).

    ``weights``: ``"imagenet"`` (Keras download, cached in ~/.keras/models), a local ``.h5`` /
    ``.weights.h5`` file (the official no-top file, weights of a backbone alone, or of this
    whole model), or ``"none"``/None for random initialisation. A failed ImageNet download
    raises WbcError; nothing falls back silently.
    """
    import keras

    weights = resolve_weights(weights)
    weights_path = None
    if weights == "imagenet":
        weights_path = fetch_imagenet_weights()
    elif weights not in (None, "none", "None", ""):
        weights_path = Path(weights)
        if not weights_path.is_file():
            raise WbcError(f"{weights_path}: weights file not found (use imagenet, none or a path "
                           "to a .h5 / .weights.h5 file)")

    inputs = keras.Input((image_size, image_size, 3), name="image")
    base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=inputs,
                                       pooling="avg")
    outputs = _dense_head(base.output, n_classes, dense_units=dense_units, dropout=dropout, l2=l2)
    model = keras.Model(inputs, outputs, name="resnet50_transfer")
    if weights_path is not None:
        _load_weights(model, base, weights_path)
    for layer in base.layers:
        layer.trainable = False
    return model


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


def _load_weights(model, base, path: Path) -> None:
    names = _weights_layer_names(path)
    # Keras 3 files name groups by layer type ("layers/dense"), legacy files by layer name:
    # either way a Dense layer means the file holds a whole model, not the backbone alone.
    target = model if ({"head_dense", "dense"} & names) else base
    try:
        target.load_weights(str(path))
    except Exception as exc:
        what = "the whole model" if target is model else "the ResNet50 backbone"
        raise WbcError(f"{path}: could not load it as weights of {what} ({exc}); expected the "
                       f"official {RESNET50_NOTOP_FILE} or a file saved from this model") from exc


def unfreeze_top(model: "keras.Model", n_blocks: int | None = None,
                 from_layer: str = "conv5_block1_1_conv") -> list[str]:
    """Make the top residual blocks trainable for phase-2 fine-tuning; returns their layer names.

    ``n_blocks`` (if given) counts residual blocks from the top (ResNet50: 3 in stage 5, 6 in
    stage 4); otherwise every block from the one holding ``from_layer`` upwards. Every
    BatchNormalization layer of the backbone stays frozen (keras-io fine-tuning recipe: updating
    their moving statistics on a small dataset with a low learning rate destroys what was
    learned). The head's BatchNorm, trained in phase 1, is left as it is: freezing it at the
    phase boundary would switch it to its (lagging) moving averages, and training accuracy
    would drop while the loss jumps. Recompile the model afterwards.
    """
    import keras

    blocks: list[str] = []
    for layer in model.layers:
        m = _BLOCK.match(layer.name)
        if m and m.group(1) not in blocks:
            blocks.append(m.group(1))
    if not blocks:
        raise WbcError(f"model {model.name!r} has no ResNet blocks to unfreeze")
    if n_blocks is not None:
        if not 1 <= n_blocks <= len(blocks):
            raise WbcError(f"n_blocks must be between 1 and {len(blocks)}, got {n_blocks}")
        chosen = set(blocks[-n_blocks:])
    else:
        m = _BLOCK.match(from_layer)
        if not m or m.group(1) not in blocks:
            raise WbcError(f"layer {from_layer!r} is not part of a residual block of {model.name!r}")
        chosen = set(blocks[blocks.index(m.group(1)):])
    unfrozen = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if _BACKBONE_LAYER.match(layer.name):
                layer.trainable = False
            continue
        m = _BLOCK.match(layer.name)
        if m and m.group(1) in chosen:
            layer.trainable = True
            unfrozen.append(layer.name)
    return unfrozen


def _conv_classifier(name: str, n_classes: int, image_size: int, convs: list[tuple[int, int, int, int]],
                     *, activation: str, dense_units: tuple[int, ...], dropout: float,
                     pool_size: int = 2) -> "keras.Model":
    """Conv blocks ``[filters, kernel, stride, padding]`` (each conv -> activation -> max pool)
    -> flatten -> dense layers -> softmax, the PyTorch-style CNNs of Study B."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    for i, (filters, kernel, stride, padding) in enumerate(convs, start=1):
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"pad{i}")(x)
        x = keras.layers.Conv2D(filters, kernel, strides=stride, activation=activation,
                                name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(pool_size, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation=activation, name=f"fc{j}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{j}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def build_cnn1(n_classes: int, image_size: int = 128, *, filters: tuple[int, int] = (6, 16),
               kernel_size: tuple[int, int] = (5, 3), activation: str = "relu",
               dense_units: tuple[int, int] = (120, 84), dropout: float = 0.0) -> "keras.Model":
    """Study B's CNN1: conv 5x5 -> max pool -> conv 3x3 -> max pool -> 3 dense layers.

    The study gives only the kernel sizes and the layer counts; filters (6, 16), dense sizes
    (120, 84, n), ReLU and 2x2 pooling after each conv follow the classic LeNet-style
    PyTorch tutorial network it builds on. Every one is a keyword knob for the study.
    """
    if len(filters) != len(kernel_size):
        raise WbcError("filters and kernel_size must have the same length (one per conv layer)")
    convs = [(f, k, 1, 0) for f, k in zip(filters, kernel_size)]
    return _conv_classifier("cnn1", n_classes, image_size, convs, activation=activation,
                            dense_units=tuple(dense_units), dropout=dropout)


def build_cnn2(n_classes: int, image_size: int = 128, *,
               blocks: tuple[tuple[int, int, int, int], ...] = ((6, 5, 1, 0), (12, 3, 1, 0), (32, 3, 1, 1)),
               depth: int | None = None, filters_scale: float = 1.0, activation: str = "relu",
               dense_units: tuple[int, int] = (120, 84), dropout: float = 0.0) -> "keras.Model":
    """Study B's CNN2: three conv blocks ``[filters, kernel, stride, padding]`` = [6,5,1,0],
    [12,3,1,0], [32,3,1,1], each followed by ReLU and 2x2 max pooling, then 3 dense layers.

    Dense sizes (120, 84, n) and pooling are our choice where the study is silent. Knobs:
    ``depth`` keeps the first N blocks, ``filters_scale`` multiplies every filter count.
    """
    chosen = list(blocks[:depth] if depth else blocks)
    if not chosen:
        raise WbcError("cnn2 needs at least one conv block")
    convs = [(max(1, round(f * filters_scale)), k, s, p) for f, k, s, p in chosen]
    return _conv_classifier("cnn2", n_classes, image_size, convs, activation=activation,
                            dense_units=tuple(dense_units), dropout=dropout)


def build_small_resnet(n_classes: int, image_size: int = 64, *,
                       widths: tuple[int, ...] = (32, 64, 128, 256), blocks_per_stage: int = 1,
                       dropout: float = 0.2, bn_momentum: float = 0.9) -> "keras.Model":
    """A compact ResNet trained from scratch (the CPU recipe, 64 px on a laptop).

    ``bn_momentum`` is 0.9, not Keras' 0.99: with a small dataset an epoch is a few dozen steps,
    and moving statistics at 0.99 need ~460 steps to forget their initial values, so for many
    epochs the model predicts one class at inference while training accuracy climbs (measured
    on the real sample: validation accuracy stuck at one class for 15 epochs at 0.99).

    Stem conv 3x3 (stride 2) -> one stage per width, each of ``blocks_per_stage`` residual
    blocks (two 3x3 conv + BatchNorm, projection shortcut when the shape changes; stages
    after the first halve the resolution) -> global average pooling -> Dropout -> softmax.
    """
    import keras

    L = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = L.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = L.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = L.Activation("relu", name="stem_relu")(x)
    for s, width in enumerate(widths, start=1):
        for b in range(1, blocks_per_stage + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            name = f"stage{s}_block{b}"
            shortcut = x
            y = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
            y = L.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn1")(y)
            y = L.Activation("relu", name=f"{name}_relu1")(y)
            y = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
            y = L.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn2")(y)
            if stride != 1 or shortcut.shape[-1] != width:
                shortcut = L.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
                shortcut = L.BatchNormalization(momentum=bn_momentum, name=f"{name}_proj_bn")(shortcut)
            x = L.Activation("relu", name=f"{name}_out")(L.Add(name=f"{name}_add")([y, shortcut]))
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    x = L.Dropout(dropout, name="dropout")(x)
    outputs = L.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


def build_model(name: str, n_classes: int, image_size: int, weights: str | Path | None = None,
                **kwargs) -> "keras.Model":
    """Build model ``name`` (resnet50 | cnn1 | cnn2 | small_resnet); ``kwargs`` go to its builder.

    ``weights`` is the ResNet50 backbone's (imagenet / none / path); for the other models a
    path loads weights saved from the same architecture, and ``imagenet`` is an error.
    """
    _check_name(name)
    if name == "resnet50":
        return build_resnet50_transfer(n_classes, image_size, weights=weights, **kwargs)
    builders = {"cnn1": build_cnn1, "cnn2": build_cnn2, "small_resnet": build_small_resnet}
    if weights == "imagenet":
        raise WbcError(f"{name} is trained from scratch: there are no ImageNet weights for it "
                       "(use --weights none, or --model resnet50)")
    try:
        model = builders[name](n_classes, image_size, **kwargs)
    except TypeError as exc:
        raise WbcError(f"bad option for {name}: {exc}") from exc
    except ValueError as exc:  # e.g. an image too small for the conv stack
        raise WbcError(f"cannot build {name} at image size {image_size}: {exc}") from exc
    if weights not in (None, "none", "None", ""):
        path = Path(weights)
        if not path.is_file():
            raise WbcError(f"{path}: weights file not found")
        try:
            model.load_weights(str(path))
        except Exception as exc:
            raise WbcError(f"{path}: could not load it into {name} ({exc})") from exc
    return model
