"""Grad-CAM finds the evidence: on images where only a planted blob decides the class, the heat
map peaks on the blob. ``gradcam_heatmap`` (notebook 13, generated into ``wbc.lessons``) takes one
raw image (H x W x 3) and picks the last 4-D layer of every project model; ``overlay_heatmap``
blends its result over the picture."""

from __future__ import annotations

import numpy as np
import pytest

from wbc.errors import WbcError

SIZE, BLOB = 32, 6
COLOURS = {0: (255, 0, 0), 1: (0, 0, 255)}  # class 0: red blob, class 1: blue blob


def blob_images(n: int, seed: int):
    """Raw-pixel noise images (0-150) with one coloured square at a random place; its colour is the class."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 150.0, size=(n, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 2, size=n)
    corners = rng.integers(2, SIZE - BLOB - 2, size=(n, 2))
    for image, label, (r, c) in zip(x, y, corners):
        image[r : r + BLOB, c : c + BLOB] = COLOURS[int(label)]
    return x, y, corners


def tiny_cnn(dtype: str | None = None):
    """A functional model like the course's: raw pixels in, Rescaling inside, float32 softmax out."""
    import keras

    kw = {"dtype": dtype} if dtype else {}
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255, **kw)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="first_conv", **kw)(x)
    x = keras.layers.MaxPooling2D(**kw)(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="last_conv", **kw)(x)
    x = keras.layers.GlobalAveragePooling2D(**kw)(x)
    outputs = keras.layers.Dense(2, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def blob_model():
    import keras

    keras.utils.set_random_seed(0)
    x, y, _ = blob_images(400, seed=0)
    model = tiny_cnn()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    return model


def peak_on_blob_share(model, n: int = 30) -> float:
    """Share of fresh test images whose heat-map maximum lies on the blob (box dilated by 3 px)."""
    from wbc.lessons import gradcam_heatmap

    x, _, corners = blob_images(n, seed=1)
    hits = 0
    for image, (r, c) in zip(x, corners):
        heat = gradcam_heatmap(model, image)  # one raw image, no batch axis
        assert heat.shape == (SIZE, SIZE) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
        pr, pc = np.unravel_index(heat.argmax(), heat.shape)
        hits += (r - 3 <= pr < r + BLOB + 3) and (c - 3 <= pc < c + BLOB + 3)
    return hits / n


def test_heatmap_peaks_on_the_blob(blob_model):
    x, y, _ = blob_images(60, seed=2)
    assert (blob_model.predict(x, verbose=0).argmax(1) == y).mean() > 0.9  # the model did learn
    assert peak_on_blob_share(blob_model) >= 0.8


def test_heatmap_under_mixed_precision(blob_model):
    model16 = tiny_cnn(dtype="mixed_float16")
    model16.set_weights(blob_model.get_weights())
    assert model16.get_layer("last_conv").compute_dtype == "float16"
    assert peak_on_blob_share(model16, n=10) >= 0.8


def test_heatmap_for_a_chosen_class_and_layer(blob_model):
    from wbc.lessons import gradcam_heatmap

    x, _, _ = blob_images(1, seed=3)
    image = x[0].astype("uint8")  # uint8 pixels, as load_raw_images gives them, work too
    # no layer named: the last 4-D layer, here "last_conv" (after it, pooling leaves a vector)
    np.testing.assert_allclose(
        gradcam_heatmap(blob_model, image), gradcam_heatmap(blob_model, image, layer_name="last_conv")
    )
    maps = [gradcam_heatmap(blob_model, image, class_index=i, layer_name="first_conv") for i in (0, 1)]
    for heat in maps:
        assert heat.shape == (SIZE, SIZE) and 0 <= heat.min() and heat.max() <= 1
    assert not np.allclose(maps[0], maps[1])  # the evidence for each class lies elsewhere
    with pytest.raises(ValueError, match="nope"):
        gradcam_heatmap(blob_model, image, layer_name="nope")
    with pytest.raises(ValueError, match="one image"):
        gradcam_heatmap(blob_model, x[:2])  # a batch is refused, not silently explained as one image


def test_overlay_blends_colour_map_over_image():
    from wbc.gradcam import overlay_heatmap

    image = np.full((40, 50, 3), 100, dtype=np.uint8)
    heat = np.zeros((5, 5), dtype=np.float32)
    heat[2, 2] = 1.0
    out = overlay_heatmap(image, heat, alpha=0.4)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    centre, corner = out[20, 25], out[0, 0]
    assert centre[0] > corner[0] and corner[2] > centre[2]  # JET: hot centre is red, cold corner blue
    assert overlay_heatmap(image[..., 0], heat).shape == (40, 50, 3)  # grayscale accepted
    with pytest.raises(WbcError, match="uint8"):
        overlay_heatmap(image.astype(np.float32), heat)
    with pytest.raises(WbcError, match="alpha"):
        overlay_heatmap(image, heat, alpha=1.5)
    with pytest.raises(WbcError, match="RGB"):
        overlay_heatmap(np.zeros((4, 4, 2), np.uint8), heat)


@pytest.mark.slow
def test_last_4d_layer_of_every_project_model():
    """The default layer is the last grid of feature maps: CNN1/CNN2 their last pooling layer, the
    small ResNet its last block, ResNet50 conv5_block3_out (flat model: reachable by name)."""
    from wbc import lessons

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype("uint8")
    expected = {
        "cnn1": ("build_cnn1", "pool2"),
        "cnn2": ("build_cnn2", "pool3"),
        "small_resnet": ("build_small_resnet", "stage4_block1_out"),
    }
    for name, (builder, layer) in expected.items():
        model = getattr(lessons, builder)(4, 64)
        heat = lessons.gradcam_heatmap(model, image)
        assert heat.shape == (64, 64) and 0 <= heat.min() <= heat.max() <= 1, name
        np.testing.assert_allclose(heat, lessons.gradcam_heatmap(model, image, layer_name=layer), err_msg=name)
    resnet = lessons.build_resnet50_transfer(4, 32, weights=None)
    heat = lessons.gradcam_heatmap(resnet, image[:32, :32])
    assert heat.shape == (32, 32) and 0 <= heat.min() <= heat.max() <= 1
    np.testing.assert_allclose(heat, lessons.gradcam_heatmap(resnet, image[:32, :32], layer_name="conv5_block3_out"))
