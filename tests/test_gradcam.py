"""Grad-CAM finds the evidence: on images where only a planted blob decides the class, the heat
map peaks on the blob. Also: the last convolutional layer is found for every project model."""
from __future__ import annotations

import numpy as np
import pytest

from wbc.errors import WbcError

SIZE, BLOB = 32, 6
COLOURS = {0: (1.0, 0.0, 0.0), 1: (0.0, 0.0, 1.0)}  # class 0: red blob, class 1: blue blob


def blob_images(n: int, seed: int):
    """Noise images with one coloured square at a random place; its colour is the class."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.6, size=(n, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 2, size=n)
    corners = rng.integers(2, SIZE - BLOB - 2, size=(n, 2))
    for image, label, (r, c) in zip(x, y, corners):
        image[r:r + BLOB, c:c + BLOB] = COLOURS[int(label)]
    return x, y, corners


def tiny_cnn(dtype: str | None = None):
    import keras

    kw = {"dtype": dtype} if dtype else {}
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 3, activation="relu", padding="same", **kw),
        keras.layers.MaxPooling2D(**kw),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="last_conv", **kw),
        keras.layers.GlobalAveragePooling2D(**kw),
        keras.layers.Dense(2, activation="softmax", dtype="float32"),
    ])


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
    from wbc.gradcam import gradcam_heatmap

    x, _, corners = blob_images(n, seed=1)
    hits = 0
    for image, (r, c) in zip(x, corners):
        heat = gradcam_heatmap(model, image[None])
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
    from wbc.gradcam import find_last_conv_layer, gradcam_heatmap

    assert find_last_conv_layer(blob_model) == "last_conv"
    x, _, _ = blob_images(1, seed=3)
    for index in (0, 1):
        heat = gradcam_heatmap(blob_model, x[0], class_index=index, layer_name="conv2d")
        assert heat.shape == (SIZE, SIZE) and 0 <= heat.min() and heat.max() <= 1
    with pytest.raises(WbcError, match="out of range"):
        gradcam_heatmap(blob_model, x, class_index=5)
    with pytest.raises(WbcError, match="no layer"):
        gradcam_heatmap(blob_model, x, layer_name="nope")
    with pytest.raises(WbcError, match="one image"):
        gradcam_heatmap(blob_model, np.zeros((2, SIZE, SIZE, 3)))


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


def test_no_convolution_gives_a_clear_error():
    import keras

    from wbc.gradcam import find_last_conv_layer

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(WbcError, match="no convolutional layer"):
        find_last_conv_layer(model)


@pytest.mark.slow
def test_last_conv_layer_of_project_models():
    from wbc.gradcam import find_last_conv_layer, gradcam_heatmap
    from wbc.models import build_model

    for name in ("cnn1", "cnn2"):
        model = build_model(name, 4, 64)
        convs = [layer.name for layer in model.layers if type(layer).__name__ == "Conv2D"]
        assert find_last_conv_layer(model) == convs[-1]
    assert find_last_conv_layer(build_model("small_resnet", 4, 64)) == "stage4_block1_out"
    resnet = build_model("resnet50", 4, 32, weights=None)
    assert find_last_conv_layer(resnet) == "conv5_block3_out"
    heat = gradcam_heatmap(resnet, np.random.default_rng(0).uniform(-100, 100, (1, 32, 32, 3)))
    assert heat.shape == (32, 32) and 0 <= heat.min() <= heat.max() <= 1
