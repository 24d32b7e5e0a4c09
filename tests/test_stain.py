"""Stain normalisation (``wbc.stain``, ``preprocess --colour reinhard|macenko``) and stain
augmentation (notebook 13's ``StainJitter``, ``train --stain-augment``)."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc import stain
from wbc.preprocess import normalise_colour, preprocess_manifest

#: Two stains (optical density in R, G, B per unit amount): a violet "nucleus" stain and a pink one.
VIOLET = np.array([0.70, 0.65, 0.20])
PINK = np.array([0.10, 0.80, 0.30])


def stained(amounts: np.ndarray, stains: np.ndarray, light=(255.0, 255.0, 255.0)) -> np.ndarray:
    """An RGB uint8 image from per-pixel stain amounts (H x W x 2) by Beer-Lambert's law."""
    od = amounts @ stains  # (H, W, 3)
    return np.clip(np.asarray(light) * np.exp(-od), 0, 255).astype(np.uint8)


def amounts_image(seed: int = 0, shape=(120, 160)) -> np.ndarray:
    """Stain amounts of a small field: a violet nucleus, pink red cells, an unstained background."""
    rng = np.random.default_rng(seed)
    amounts = np.zeros((*shape, 2))
    violet, pink = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    cv2.circle(violet, (80, 60), 25, 1, -1)
    for _ in range(8):
        cv2.circle(pink, (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0]))), 14, 1, -1)
    amounts[..., 0] = violet * rng.uniform(0.8, 1.4, shape)
    amounts[..., 1] = pink * (1 - violet) * rng.uniform(0.4, 0.8, shape)
    return amounts


def test_reinhard_reaches_the_target_statistics():
    img = stained(amounts_image(), np.stack([VIOLET, PINK]))
    mean, std = stain.reinhard_stats(stain.reinhard(img))
    assert np.allclose(mean, stain.REINHARD_TARGET[0], atol=1.5)
    assert np.allclose(std, stain.REINHARD_TARGET[1], rtol=0.15)


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_normalisation_brings_two_stainings_of_one_field_together(method):
    """The same field stained two ways (other stain colours, stronger stain, tinted light): after
    normalisation the two images differ much less than before."""
    amounts = amounts_image()
    a = stained(amounts, np.stack([VIOLET, PINK]))
    b = stained(amounts * 1.4, np.stack([VIOLET * [0.8, 1.0, 1.5], PINK * [1.6, 0.9, 1.0]]), light=(240, 245, 255))
    before = np.abs(a.astype(int) - b).mean()
    after = np.abs(normalise_colour(a, method).astype(int) - normalise_colour(b, method)).mean()
    assert after < 0.5 * before, f"{method}: mean difference {before:.1f} -> {after:.1f}"


def test_macenko_finds_the_stain_vectors():
    stains = np.stack([VIOLET, PINK])
    found, amounts = stain.macenko_stains(stained(amounts_image(), stains))
    for column, truth in zip(found.T, stains):
        cosine = column @ truth / np.linalg.norm(column) / np.linalg.norm(truth)
        assert cosine > 0.98  # the nucleus stain first: the one that absorbs more red
    assert amounts.shape == (2, 120 * 160)


def test_macenko_refuses_an_unstained_image_and_preprocess_quarantines_it(tmp_path):
    white = np.full((64, 64, 3), 250, np.uint8)
    with pytest.raises(ValueError, match="stained pixels"):
        stain.macenko(white)
    good = stained(amounts_image(), np.stack([VIOLET, PINK]))
    for name, img in (("good.png", good), ("white.png", white)):
        cv2.imwrite(str(tmp_path / name), img)
    manifest = pd.DataFrame({"path": [str(tmp_path / n) for n in ("good.png", "white.png")], "label": ["a", "a"]})
    processed, quarantine = preprocess_manifest(
        manifest, tmp_path / "out", 32, colour="macenko", jobs=1, progress=False
    )
    assert len(processed) == 1 and quarantine["reason"].tolist() == [
        "macenko colour normalisation failed: fewer than 100 stained pixels"
    ]


def test_black_background_stays_black():
    img = stained(amounts_image(), np.stack([VIOLET, PINK]))
    img[:, :30] = 0  # a segmented image's background
    for method in ("reinhard", "macenko"):
        assert (normalise_colour(img, method)[:, :30] == 0).all()


# ----------------------------------------------------------------------------- StainJitter


@pytest.fixture(scope="module")
def jitter_layer():
    from wbc.runtime import lessons

    return lessons().StainJitter


def test_stain_jitter_changes_training_batches_only(jitter_layer):
    rng = np.random.default_rng(0)
    batch = stained(np.stack([amounts_image(s, (32, 32)) for s in range(4)]), np.stack([VIOLET, PINK])).astype(
        np.float32
    )
    layer = jitter_layer(seed=0)
    assert np.array_equal(np.asarray(layer(batch, training=False)), batch)
    out = np.asarray(layer(batch, training=True))
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 255
    change = np.abs(out - batch).mean(axis=(1, 2, 3))
    assert (change > 0.3).all() and len(set(np.round(change, 3))) == 4  # each image its own draw
    identity = np.asarray(jitter_layer(sigma=0.0, bias=0.0)(batch, training=True))
    assert np.abs(identity - batch).max() < 0.5  # the deconvolution round trip loses nothing
    noise = rng.integers(0, 256, batch.shape).astype(np.float32)
    assert np.abs(np.asarray(jitter_layer(sigma=0.0, bias=0.0)(noise, training=True)) - noise).max() < 0.5


def test_stain_jitter_survives_saving(jitter_layer, tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), jitter_layer(sigma=0.1, bias=0.02, seed=3)])
    model.save(tmp_path / "m.keras")
    layer = keras.models.load_model(tmp_path / "m.keras").layers[0]
    assert (layer.sigma, layer.bias, layer.seed) == (0.1, 0.02, 3)
