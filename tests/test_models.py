"""Models: builders by name (wbc.lessons), raw pixels in, parameter counts, weights files, unfreezing, errors."""

from __future__ import annotations

import numpy as np
import pytest

from wbc.errors import WbcError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # from the legacy .h5 writer

RESNET50_NOTOP = (
    23_587_712  # keras.applications.ResNet50(include_top=False): 23,534,592 trainable + 53,120 BN statistics
)


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@pytest.fixture(scope="module")
def resnet_from_files(tmp_path_factory):
    """A ResNet50 backbone with random weights saved in both file formats, and a transfer model
    built from the Keras 3 file (ResNet50 graphs are slow to build: build them once here)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from wbc.models import build_model

    folder = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(7)
    base = keras.applications.ResNet50(include_top=False, weights=None, pooling="avg", input_shape=(32, 32, 3))
    modern, legacy = folder / "backbone.weights.h5", folder / "backbone_notop.h5"
    base.save_weights(modern)
    with h5py.File(legacy, "w") as f:  # the layout of the official *_notop.h5 ImageNet file
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    model = build_model("resnet50", 4, 32, weights=modern)
    return base, model, legacy, folder


def _backbone_weights_equal(base, model) -> bool:
    pairs = [
        (w, v)
        for layer in base.layers
        if layer.weights
        for w, v in zip(layer.get_weights(), model.get_layer(layer.name).get_weights())
    ]
    return len(pairs) == 318 and all(np.array_equal(w, v) for w, v in pairs)


def test_build_model_dispatches_to_the_lesson_builders():
    from wbc import lessons
    from wbc.models import MODEL_NAMES, build_model

    assert MODEL_NAMES == ("resnet50", "cnn1", "cnn2", "small_resnet")
    model = build_model("cnn1", 3, 48, filters=(8, 8), kernels=(3, 3), dense=(32, 16), activation="tanh")
    reference = lessons.build_cnn1(3, 48, filters=(8, 8), kernels=(3, 3), dense=(32, 16), activation="tanh")
    assert [layer.name for layer in model.layers] == [layer.name for layer in reference.layers]
    assert model.count_params() == reference.count_params()


@pytest.mark.slow
def test_resnet50_transfer_is_flat_with_frozen_base_and_study_head(resnet_from_files):
    import keras

    base, model, _, _ = resnet_from_files
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat: no nested model
    assert model.get_layer("conv5_block3_out").output.shape == (None, 1, 1, 2048)
    assert [layer.name for layer in model.layers[-5:]] == [
        "avg_pool",
        "head_bn",
        "head_dense",
        "head_dropout",
        "predictions",
    ]
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    # head: BN(2048) = 4 x 2048 = 8,192 (half of it trainable); Dense(2048->256) = 524,544; Dense(256->4) = 1,028
    assert model.count_params() == RESNET50_NOTOP + 8_192 + 524_544 + 1_028 == 24_121_476
    assert _count(model.trainable_weights) == 4_096 + 524_544 + 1_028 == 529_668
    assert _count(model.non_trainable_weights) == RESNET50_NOTOP + 4_096
    assert model.get_layer("head_dense").kernel_regularizer is not None
    assert _backbone_weights_equal(base, model)  # loaded from the Keras 3 file the test saved


@pytest.mark.slow
def test_resnet50_takes_raw_pixels_through_imagenet_preprocessing(resnet_from_files):
    import keras

    model = resnet_from_files[1]
    assert model.layers[1].name == "imagenet_preprocess"
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inner = keras.Model(model.input, model.get_layer("imagenet_preprocess").output)(pixels).numpy()
    np.testing.assert_allclose(inner, keras.applications.resnet50.preprocess_input(pixels.copy()), atol=1e-4)
    np.testing.assert_allclose(model.predict(pixels, verbose=0).sum(axis=1), 1.0, rtol=1e-5)
    # frozen BatchNorm runs in inference mode: the backbone's features ignore training=True
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    np.testing.assert_allclose(features(pixels, training=True), features(pixels, training=False), atol=1e-5)


@pytest.mark.slow
def test_official_legacy_notop_file_layout_loads(resnet_from_files):
    from wbc.models import build_model

    base, _, legacy, _ = resnet_from_files
    assert _backbone_weights_equal(base, build_model("resnet50", 4, 32, weights=legacy))


@pytest.mark.slow
def test_whole_model_weights_file_loads(resnet_from_files):
    from wbc.models import build_model

    _, model, _, folder = resnet_from_files
    head = model.get_layer("head_dense")
    head.kernel.assign(np.full(head.kernel.shape, 0.5, "float32"))
    whole = folder / "whole.weights.h5"
    model.save_weights(whole)
    again = build_model("resnet50", 4, 32, weights=whole)
    for w, v in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(w, v)
    cnn = build_model("cnn2", 4, 48)
    cnn.save_weights(folder / "cnn2.weights.h5")
    loaded = build_model("cnn2", 4, 48, weights=folder / "cnn2.weights.h5")
    assert all(np.array_equal(w, v) for w, v in zip(cnn.get_weights(), loaded.get_weights()))


@pytest.mark.slow
def test_unfreeze_top_keeps_backbone_batchnorm_frozen():
    import keras

    from wbc.lessons import unfreeze_top
    from wbc.models import build_model

    model = build_model("resnet50", 4, 32, weights="none")
    before = _count(model.trainable_weights)
    unfrozen = unfreeze_top(model)  # default: stage 5 (conv5_block1 .. conv5_block3)
    stage5 = [
        layer for layer in model.layers if layer.name.startswith("conv5_") and isinstance(layer, keras.layers.Conv2D)
    ]
    assert len(stage5) == 10 and set(unfrozen) == {layer.name for layer in stage5} | {
        "head_bn",
        "head_dense",
        "predictions",
    }
    # block1: 0_conv 1024x2048+2048, 1_conv 1024x512+512, 2_conv 3x3x512x512+512, 3_conv 512x2048+2048 = 6,034,432;
    # blocks 2 and 3: 2048x512+512 + 2,359,808 + 1,050,624 = 4,459,520 each
    assert _count(model.trainable_weights) - before == sum(layer.count_params() for layer in stage5) == 14_953_472
    backbone_bn = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name != "head_bn"
    ]
    assert len(backbone_bn) == 53 and not any(layer.trainable for layer in backbone_bn)
    assert model.get_layer("head_bn").trainable  # the head's BatchNorm keeps training in phase 2
    assert model.get_layer("conv5_block1_0_conv").trainable  # the shortcut convolution of block 1 too
    assert not model.get_layer("conv4_block6_3_conv").trainable
    unfreeze_top(model, "conv4_block6_1_conv")  # one block more
    assert model.get_layer("conv4_block6_1_conv").trainable and not model.get_layer("conv4_block5_1_conv").trainable
    assert not model.get_layer("conv4_block6_1_bn").trainable


def test_imagenet_download_failure_names_url_cache_and_alternatives(monkeypatch, tmp_path, capsys):
    import keras

    from wbc import models

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    for call in (
        lambda: models.build_model("resnet50", 4, 32, weights="imagenet"),
        lambda: models.weights_file("imagenet"),
    ):
        with pytest.raises(WbcError) as info:  # never a silent fall-back to random weights
            call()
        message = str(info.value)
        assert models.RESNET50_NOTOP_URL in message
        assert str(tmp_path / "keras-home" / "models" / models.RESNET50_NOTOP_FILE) in message
        assert "--weights PATH" in message and "--weights none" in message
        assert "network is unreachable" in message
    # "auto" falls back to random weights, but loudly
    assert models.resolve_weights("auto") == "none"
    assert "RANDOM" in capsys.readouterr().err
    assert models.weights_file("auto") is None
    assert models.resolve_weights("imagenet") == "imagenet"
    assert models.weights_file("none") is None and models.weights_file(None) is None


def test_weights_path_errors(tmp_path):
    from wbc.models import build_model

    with pytest.raises(WbcError, match="not found"):
        build_model("resnet50", 4, 32, weights=tmp_path / "missing.h5")
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(WbcError, match="junk.weights.h5"):
        build_model("resnet50", 4, 32, weights=junk)


@pytest.mark.parametrize(
    "name, expected",
    [
        # conv1 5x5x3x6+6 = 456; conv2 3x3x6x16+16 = 880; flatten 14x14x16 = 3,136;
        # fc1 3,136x120+120 = 376,440; fc2 120x84+84 = 10,164; out 84x4+4 = 340
        ("cnn1", 456 + 880 + 376_440 + 10_164 + 340),
        # conv 456 + 660 + 3,488; flatten 7x7x32 = 1,568; fc1 1,568x120+120 = 188,280; fc2 10,164; out 340
        ("cnn2", 456 + 660 + 3_488 + 188_280 + 10_164 + 340),
        # stem 864 + BN 128; stage1 2x9,216 + 2 BN 128; stage2 18,432 + 36,864 + proj 2,048 + 3 BN 256;
        # stage3 73,728 + 147,456 + 8,192 + 3 BN 512; stage4 294,912 + 589,824 + 32,768 + 3 BN 1,024;
        # Dense(256->4) 1,028
        ("small_resnet", 992 + 18_688 + 58_112 + 230_912 + 920_576 + 1_028),
    ],
)
def test_parameter_counts(name, expected):
    from wbc.models import build_model

    assert build_model(name, 4, 64).count_params() == expected
    assert expected == {"cnn1": 388_280, "cnn2": 203_388, "small_resnet": 1_230_308}[name]


@pytest.mark.parametrize("name", ["cnn1", "cnn2", "small_resnet"])
def test_small_models_take_raw_pixels(name):
    import keras

    from wbc.models import build_model

    model = build_model(name, 5, 48)
    scale = model.layers[1]
    assert isinstance(scale, keras.layers.Rescaling) and scale.scale == pytest.approx(1 / 255)
    probs = model(np.full((2, 48, 48, 3), 255.0, np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"


def test_cnn_knobs():
    import keras

    from wbc.models import build_model

    model = build_model("cnn1", 3, 48, filters=(8, 8), kernels=(3, 3), activation="tanh", dense=(32, 16))
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [8, 8]
    assert model.get_layer("fc1").units == 32 and model.get_layer("fc1").activation.__name__ == "tanh"
    shallow = build_model("cnn2", 3, 48, blocks=((12, 3, 1, 0), (24, 3, 1, 1)), dropout=0.2)
    assert [layer.filters for layer in shallow.layers if isinstance(layer, keras.layers.Conv2D)] == [12, 24]
    assert shallow.get_layer("dropout1").rate == 0.2


def test_model_errors():
    from wbc.models import build_model

    with pytest.raises(WbcError, match="unknown model 'vgg16'"):
        build_model("vgg16", 4, 64)
    for name in ("cnn1", "cnn2", "small_resnet"):
        with pytest.raises(WbcError, match="no ImageNet weights"):
            build_model(name, 4, 64, weights="imagenet")
    with pytest.raises(WbcError, match="image size 8"):
        build_model("cnn2", 4, 8)
    with pytest.raises(WbcError, match="bad option"):
        build_model("cnn1", 4, 64, filterz=3)
