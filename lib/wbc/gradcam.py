"""Drawing a Grad-CAM heat map over an image, and saving overlays for ``predict --gradcam``.

Grad-CAM itself (``gradcam_heatmap``, with ``tf.GradientTape``) is taught in notebook 13 and
generated into ``wbc.lessons``; this module only blends its result over the picture.
"""

from __future__ import annotations

import cv2
import numpy as np

from wbc.errors import WbcError


def overlay_heatmap(
    raw_image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: int = cv2.COLORMAP_JET
) -> np.ndarray:
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
    heat = np.round(255 * np.clip(heat, 0, 1)).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, colormap), cv2.COLOR_BGR2RGB)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_overlays(model, config: dict, predictions, out_dir, alpha: float = 0.4) -> list:
    """For each readable row of ``evaluate.classify_images``' table, ``lessons.gradcam_heatmap`` of
    the predicted class blended over the original image, saved as ``out_dir/<name>_gradcam.png``
    (``predict --gradcam``); returns the paths."""
    from pathlib import Path

    from wbc.evaluate import read_model_input
    from wbc.fileio import write_bytes_atomic
    from wbc.images import read_image
    from wbc.runtime import lessons

    classes, size = list(config["classes"]), int(config["image_size"])
    written: list[Path] = []
    for row in predictions[predictions["error"].fillna("") == ""].to_dict("records"):
        x = read_model_input(row["path"], size, config.get("preprocess"))
        heat = lessons().gradcam_heatmap(model, x, class_index=classes.index(row["predicted_label"]))
        overlay = overlay_heatmap(read_image(row["path"]), heat, alpha=alpha)
        stem, n = Path(row["path"]).stem, 1
        while (name := f"{stem}_gradcam.png" if n == 1 else f"{stem}_{n}_gradcam.png") in {p.name for p in written}:
            n += 1
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        if not ok:
            raise WbcError(f"could not encode the Grad-CAM overlay of {row['path']}")
        write_bytes_atomic(Path(out_dir) / name, encoded.tobytes())
        written.append(Path(out_dir) / name)
    return written
