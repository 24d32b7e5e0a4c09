"""Stain normalisation of RGB uint8 images (``preprocess --colour reinhard|macenko``), numpy and OpenCV only.

- **Reinhard** (Reinhard, Ashikhmin, Gooch and Shirley, "Color transfer between images", IEEE
  Computer Graphics and Applications 21(5), 2001): shift and scale each channel of the image in a
  perceptual colour space (CIELAB here) to the mean and standard deviation of a target.
- **Macenko** (Macenko et al., "A method for normalizing histology slides for quantitative
  analysis", IEEE ISBI 2009): in optical density (Beer-Lambert: OD = -log(I / I0), I0 the image's
  own background, which becomes white), find the two
  stain vectors of the image as the extreme angles of its stained pixels in the plane of their two
  main directions, express each pixel as amounts of the two stains, rescale the amounts to a
  target's 99th percentile and rebuild the image with the target's stain vectors.

The targets are fixed (so images of every source go to the same place): the median statistics of
the 565 PBC images of the course's real sample outside the erythroblast and platelet folders
(``reference_stats``, printed by ``python -m wbc.stain IMAGE...``). Near-black pixels (the background of segmented images) are
left out of every statistic and left black.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

#: CIELAB (L 0-100, a and b about -128..127) mean and standard deviation per channel of a PBC image.
REINHARD_TARGET = ((78.88, 11.34, 6.85), (16.42, 9.85, 15.01))
#: Macenko stain vectors (optical density of one unit of each stain, columns: nucleus, the other stain)
#: and the 99th percentile of each stain's amount, in a PBC image.
MACENKO_STAINS = ((0.73, 0.44), (0.57, 0.89), (0.34, 0.09))
MACENKO_MAX = (0.73, 2.38)
#: ... and its background (I0, RGB), which the rebuilt images get.
MACENKO_LIGHT = (256.0, 233.0, 206.0)
#: Pixels whose brightest channel is below this are treated as background (left out, left black).
DARK = 20


def _light(pixels: np.ndarray) -> np.ndarray:
    """I0, the light through no stain: each channel's 99th percentile over the non-dark pixels."""
    light = pixels[pixels.max(axis=1) >= DARK]
    return np.percentile(light if len(light) else pixels, 99, axis=0).astype(np.float32) + 1.0


def _od(pixels: np.ndarray) -> np.ndarray:
    """Optical density of uint8 RGB values (N x 3), -log(I / I0) with I0 the image's own
    background (``_light``), which gets OD 0 whatever its tint."""
    return np.maximum(-np.log((pixels.astype(np.float32) + 1.0) / _light(pixels)), 0.0)


def reinhard_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """CIELAB mean and standard deviation per channel over the image's non-dark pixels (None: none)."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    lab = lab[rgb.reshape(-1, 3).max(axis=1) >= DARK]
    if len(lab) < 16:
        return None
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard(rgb: np.ndarray, target=REINHARD_TARGET) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer of an RGB uint8 image to ``target`` (means, stds) in CIELAB."""
    stats = reinhard_stats(rgb)
    if stats is None:
        return rgb
    mean, std = stats
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab = (lab - mean) * (np.asarray(target[1], np.float32) / np.maximum(std, 1e-3)) + np.asarray(target[0], np.float32)
    out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return _keep_dark(rgb, np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8))


def macenko_stains(rgb: np.ndarray, beta: float = 0.15, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The image's stain vectors (3 x 2, columns: the stain with more red absorbed, i.e. the
    nucleus stain, first) and per-pixel amounts (2 x N), Macenko et al. (2009); None when fewer
    than 100 pixels are stained (an optical density of norm above ``beta``: red cells absorb
    little red, so a threshold on every channel would leave them out)."""
    pixels = rgb.reshape(-1, 3)
    od = _od(pixels)
    stained = od[(np.linalg.norm(od, axis=1) > beta) & (pixels.max(axis=1) >= DARK)]
    if len(stained) < 100:
        return None
    _, vectors = np.linalg.eigh(np.cov(stained.T))
    plane = vectors[:, 1:3]  # the two main directions
    projected = stained @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100 - alpha])
    stains = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (low, high)]
    stains = [s if s.sum() >= 0 else -s for s in stains]  # optical densities are positive
    if stains[0][0] < stains[1][0]:
        stains.reverse()
    matrix = np.stack(stains, axis=1)
    amounts = np.maximum(np.linalg.lstsq(matrix, od.T, rcond=None)[0], 0.0)
    return matrix, amounts


def macenko(rgb: np.ndarray, stains=MACENKO_STAINS, max_amounts=MACENKO_MAX, light=MACENKO_LIGHT) -> np.ndarray:
    """Macenko et al. (2009) stain normalisation of an RGB uint8 image to the target ``stains`` (3 x 2),
    99th-percentile amounts and background ``light``; too few stained pixels raise ValueError."""
    found = macenko_stains(rgb)
    if found is None:
        raise ValueError("fewer than 100 stained pixels")
    _, amounts = found
    scale = np.asarray(max_amounts) / np.maximum(np.percentile(amounts, 99, axis=1), 1e-6)
    od = (np.asarray(stains) @ (amounts * scale[:, None])).T
    out = np.clip(np.asarray(light, np.float32) * np.exp(-od) - 1.0, 0, 255).reshape(rgb.shape)
    return _keep_dark(rgb, (out + 0.5).astype(np.uint8))


def _keep_dark(rgb: np.ndarray, out: np.ndarray) -> np.ndarray:
    dark = rgb.max(axis=2) < DARK
    if dark.any():
        out[dark] = rgb[dark]
    return out


def reference_stats(images) -> dict:
    """The median Reinhard and Macenko statistics of RGB uint8 ``images``: how the targets above were set."""
    lab = [s for s in map(reinhard_stats, images) if s is not None]
    found = [(m, np.percentile(a, 99, axis=1)) for m, a in (f for f in map(macenko_stains, images) if f is not None)]
    return {
        "REINHARD_TARGET": np.round(np.median(np.array(lab), axis=0), 2).tolist(),
        "MACENKO_STAINS": np.round(np.median(np.array([m for m, _ in found]), axis=0), 2).tolist(),
        "MACENKO_MAX": np.round(np.median(np.array([p for _, p in found]), axis=0), 2).tolist(),
        "MACENKO_LIGHT": np.round(np.median(np.array([_light(i.reshape(-1, 3)) for i in images]), axis=0), 1).tolist(),
    }


if __name__ == "__main__":  # python -m wbc.stain IMAGE... : the reference statistics of those images
    from wbc.images import read_image

    print(reference_stats([read_image(p) for p in sys.argv[1:]]))
