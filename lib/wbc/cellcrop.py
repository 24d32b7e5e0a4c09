"""Find the white cell in a smear image and crop a square around it (``preprocess --crop-cell``).

Laboratories frame their cells differently: PBC and LMU centre one cell that fills much of the
frame, other sources show a smaller cell off-centre among red cells. Cropping every image to a
square centred on the white cell, sized so that its nucleus spans a fixed share of the side,
gives the model the same framing and scale from every source.

The nucleus is the one structure that stains violet-blue in a May-Grünwald-Giemsa smear: blue
well above green. Red cells (pink: red and blue close, green lower by little), the background
(light grey) and eosinophil granules (orange) score low on ``blue - green``; a black background
(segmented images) scores zero. Otsu's method with three classes (background, red cells and
cytoplasm, nucleus; it adapts to the stain's strength) thresholds that score, a morphological opening (drops specks), a closing by a few percent of the side (joins the lobes
of a segmented nucleus) and the largest connected component give the nucleus. No component
with enough contrast -> ``None``: the caller quarantines the image, it never passes it on
uncropped.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Share of the crop's side that the nucleus spans (the cell, with its cytoplasm, covers more).
NUCLEUS_SHARE = 0.5
#: The nucleus must be this much bluer than the rest of the image (``blue - green``, 0-255 scale).
MIN_CONTRAST = 15.0
#: ... and cover at least this share of the image.
MIN_AREA = 0.002


def otsu_three(values: np.ndarray) -> int:
    """The upper of the two thresholds that split uint8 ``values`` into three classes with the
    largest between-class variance (Otsu's method, 1979, with three classes): values above it
    form the brightest class."""
    p = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    p /= p.sum()
    w, m = np.cumsum(p), np.cumsum(p * np.arange(256))
    t1, t2 = np.triu_indices(256, k=1)  # every pair of thresholds t1 < t2
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = m[t1] ** 2 / w[t1] + (m[t2] - m[t1]) ** 2 / (w[t2] - w[t1]) + (m[-1] - m[t2]) ** 2 / (1 - w[t2])
    return int(t2[np.nanargmax(np.where(np.isfinite(spread), spread, np.nan))])


def nucleus_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Binary mask (uint8 0/1) of the white cell's nucleus in an RGB uint8 image, or None when none stands out."""
    height, width = rgb.shape[:2]
    pixels = rgb.astype(np.float32)
    score = cv2.GaussianBlur(pixels[..., 2] - pixels[..., 1], (0, 0), max(1.0, min(height, width) / 200))
    low, high = float(score.min()), float(score.max())
    if high - low < MIN_CONTRAST:
        return None
    scaled = ((score - low) * (255.0 / (high - low))).astype(np.uint8)
    above = (scaled > otsu_three(scaled)).astype(np.uint8)
    side = min(height, width)
    opened = cv2.morphologyEx(above, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    joined = cv2.morphologyEx(
        opened, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, side // 25),) * 2)
    )
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    nucleus = (labels == largest).astype(np.uint8)
    inside, outside = score[nucleus > 0], score[nucleus == 0]
    if nucleus.sum() < MIN_AREA * height * width or inside.mean() - np.median(outside) < MIN_CONTRAST:
        return None
    return nucleus


def find_cell(rgb: np.ndarray, nucleus_share: float = NUCLEUS_SHARE) -> tuple[int, int, int] | None:
    """The crop box ``(x, y, side)`` in pixels (top-left corner; it may reach past the image's
    edges) of a square centred on the nucleus whose longer extent is ``nucleus_share`` of the
    side; None when no nucleus is found."""
    if not 0 < nucleus_share <= 1:
        raise ValueError(f"nucleus_share must be in (0, 1], got {nucleus_share}")
    mask = nucleus_mask(rgb)
    if mask is None:
        return None
    x, y, w, h = cv2.boundingRect(mask)
    side = max(8, round(max(w, h) / nucleus_share))
    return round(x + w / 2 - side / 2), round(y + h / 2 - side / 2), side


def crop_box(img: np.ndarray, box: tuple[int, int, int], background: tuple[int, ...]) -> np.ndarray:
    """The square ``box = (x, y, side)`` of ``img``; parts outside the image are filled with
    ``background`` (the caller passes the smear's background colour)."""
    x, y, side = box
    height, width = img.shape[:2]
    top, left = max(0, -y), max(0, -x)
    bottom, right = max(0, y + side - height), max(0, x + side - width)
    inner = img[max(0, y) : min(height, y + side), max(0, x) : min(width, x + side)]
    if top or left or bottom or right:
        inner = cv2.copyMakeBorder(inner, top, bottom, left, right, cv2.BORDER_CONSTANT, value=background)
    return np.ascontiguousarray(inner)
