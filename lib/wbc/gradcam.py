"""Grad-CAM: which part of the image drove the model's decision (Selvaraju et al., 2017).

The class score is differentiated with respect to the feature maps of the last convolutional
layer; the gradients, averaged over the image, weight those maps; their positive sum is the
heat map. It is found automatically (:func:`find_last_conv_layer`): ``conv5_block3_out`` for
ResNet50, the last ``Conv2D`` for the small CNNs. TensorFlow is imported inside the functions.
"""
from __future__ import annotations

import cv2
import numpy as np

from wbc.errors import WbcError

CONV_TYPES = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")
AFTER_CONV_TYPES = ("Add", "Activation", "ReLU")  # e.g. ResNet's conv5_block3_add / _out


def _is_4d(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer never called, or with several outputs
        return False


def find_last_conv_layer(model) -> str:
    """Name of the last layer with a 4-D output that is a convolution, or the Add / Activation
    that closes a convolutional block (ResNet50: ``conv5_block3_out``)."""
    layers = list(model.layers)
    conv_seen = [False] * len(layers)
    seen = False
    for i, layer in enumerate(layers):
        seen = seen or type(layer).__name__ in CONV_TYPES
        conv_seen[i] = seen
    for i in range(len(layers) - 1, -1, -1):
        kind = type(layers[i]).__name__
        if _is_4d(layers[i]) and (kind in CONV_TYPES or (kind in AFTER_CONV_TYPES and conv_seen[i])):
            return layers[i].name
    nested = [layer.name for layer in layers if hasattr(layer, "layers")]
    hint = f" (nested models {nested}: build the model flat so their layers are reachable)" if nested else ""
    raise WbcError(f"model {model.name!r} has no convolutional layer with a 4-D output for Grad-CAM{hint}")


def gradcam_heatmap(model, image_batch, class_index: int | None = None,
                    layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heat map of one preprocessed image, resized to the image, values in [0, 1].

    ``image_batch``: one model-ready image, shape (1, H, W, C) or (H, W, C). ``class_index``:
    the class to explain (default: the predicted one). The score differentiated is the class's
    log-probability minus the mean log-probability over classes (equal to its logit minus the
    mean logit), which, unlike the probability itself, does not saturate when the model is
    confident. Works under mixed precision (everything is cast to float32).
    """
    import keras
    import tensorflow as tf

    x = np.asarray(image_batch, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise WbcError(f"Grad-CAM explains one image at a time: expected shape (1, H, W, C), got {x.shape}")
    try:
        layer = model.get_layer(layer_name or find_last_conv_layer(model))
    except ValueError as exc:
        raise WbcError(f"no layer {layer_name!r} in model {model.name!r}") from exc
    grad_model = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    with tf.GradientTape() as tape:
        features, probs = grad_model(tf.convert_to_tensor(x), training=False)
        probs = tf.cast(probs, tf.float32)
        index = int(tf.argmax(probs[0])) if class_index is None else int(class_index)
        if not 0 <= index < probs.shape[-1]:
            raise WbcError(f"class_index {index} out of range 0..{probs.shape[-1] - 1}")
        log_probs = tf.math.log(tf.clip_by_value(probs, 1e-30, 1.0))
        score = log_probs[:, index] - tf.reduce_mean(log_probs, axis=-1)
    grads = tf.cast(tape.gradient(score, features), tf.float32)
    features = tf.cast(features, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2))  # one weight per feature map
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0].numpy()
    cam = cv2.resize(cam.astype(np.float32), (x.shape[2], x.shape[1]), interpolation=cv2.INTER_LINEAR)
    top = float(cam.max())
    return np.clip(cam / top, 0.0, 1.0) if top > 0 else np.zeros_like(cam)


def overlay_heatmap(raw_image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4,
                    colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a heat map (values in [0, 1], any size) over an RGB ``uint8`` image; returns RGB ``uint8``.

    ``colormap``: an OpenCV colour map (default JET: red is high, blue is low).
    """
    image = np.asarray(raw_image)
    if image.dtype != np.uint8:
        raise WbcError(f"overlay needs a uint8 image (as from load_raw_images), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise WbcError(f"overlay needs an RGB image of shape (H, W, 3), got {image.shape}")
    if not 0 <= alpha <= 1:
        raise WbcError(f"alpha must lie in [0, 1], got {alpha}")
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (image.shape[1], image.shape[0]))
    heat = np.uint8(np.round(255 * np.clip(heat, 0, 1)))
    colour = cv2.cvtColor(cv2.applyColorMap(heat, colormap), cv2.COLOR_BGR2RGB)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
