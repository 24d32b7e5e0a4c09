"""tf.data input pipeline (notebook 07's make_dataset, the checked pipeline.split_dataset):
shapes, dtypes, raw pixel range, label order, augmentation, cache, errors; models scale pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbc.errors import WbcError

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (0, 0, 230), "green": (0, 200, 0), "blue": (230, 0, 0)}  # BGR for cv2


def write_toy_split(
    root: Path, per_class: int = 8, size: int = 48, seed: int = 0, classes: list[str] = CLASSES
) -> Path:
    """A split folder (train/val/test CSV + classes.txt) of small JPEGs: one coloured disc per
    image on a noisy grey background, its colour deciding the class."""
    import cv2

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in classes:
        for i in range(per_class):
            img = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
            centre = tuple(int(c) for c in rng.integers(size // 3, 2 * size // 3, 2))
            cv2.circle(img, centre, size // 4, COLOURS.get(label, (255, 255, 255)), -1)
            path = images / f"{label}_{i:03d}.jpg"
            cv2.imwrite(str(path), img)
            split = "train" if i < per_class // 2 else ("val" if i % 2 else "test")
            rows.append({"path": str(path), "label": label, "source": "toy", "split": split})
    split_dir = root / "split"
    split_dir.mkdir(exist_ok=True)
    df = pd.DataFrame(rows)
    for split in ("train", "val", "test"):
        df[df["split"] == split].drop(columns="split").to_csv(split_dir / f"{split}.csv", index=False)
    (split_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    return split_dir


@pytest.fixture(scope="module")
def toy_split(tmp_path_factory) -> Path:
    return write_toy_split(tmp_path_factory.mktemp("toy"))


def lessons():
    from wbc.runtime import lessons as load

    return load()


def images_of(ds) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in ds])


def test_read_classes_and_load_split(toy_split):
    from wbc.pipeline import load_split, read_classes

    assert read_classes(toy_split) == CLASSES
    train = load_split(toy_split, "train")
    assert len(train) == 12 and set(train["label"]) == set(CLASSES)
    with pytest.raises(WbcError, match="unknown split"):
        load_split(toy_split, "training")
    with pytest.raises(WbcError, match="classes.txt"):
        read_classes(toy_split.parent)


def test_batches_have_shapes_dtypes_one_hot_labels_and_raw_pixels(toy_split):
    import tensorflow as tf

    from wbc.pipeline import split_dataset

    batches = list(split_dataset(toy_split / "train.csv", CLASSES, 32, 5))
    assert [int(x.shape[0]) for x, _ in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.shape == (5, 32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (5, 3) and y.dtype == tf.float32
    np.testing.assert_array_equal(y.numpy().sum(axis=1), 1.0)  # one-hot: one class per image
    assert set(np.unique(y.numpy())) == {0.0, 1.0}
    values = np.concatenate([b[0].numpy().ravel() for b in batches])
    assert 0.0 <= values.min() and values.max() <= 255.0 and values.max() > 200  # raw pixels, not scaled
    np.testing.assert_array_equal(values, np.round(values))  # whole numbers: decoded uint8 values


def test_make_dataset_takes_path_and_label_lists(toy_split):
    from wbc.pipeline import label_indices, load_split, split_dataset

    df = load_split(toy_split, "val")
    paths, labels = df["path"].tolist(), label_indices(df["label"], CLASSES)
    ds = lessons().make_dataset(paths, labels, len(CLASSES), 16, 4)
    np.testing.assert_array_equal(images_of(ds), images_of(split_dataset(df, CLASSES, 16, 4)))
    y = np.concatenate([y.numpy() for _, y in ds])
    np.testing.assert_array_equal(y.argmax(axis=1), labels)


def test_decode_resize_gives_uint8_rgb_of_the_requested_size(tmp_path):
    import cv2
    import tensorflow as tf

    from wbc.pipeline import load_raw_images

    path = tmp_path / "flat.png"  # PNG: lossless, so the pixel values are exact
    cv2.imwrite(str(path), np.full((20, 12, 3), (30, 20, 10), np.uint8))  # BGR on disk = RGB (10, 20, 30)
    image = lessons().decode_resize(tf.constant(str(path)), 16)
    assert image.shape == (16, 16, 3) and image.dtype == tf.uint8
    np.testing.assert_array_equal(image.numpy()[0, 0], [10, 20, 30])
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((8, 8), 77, np.uint8))  # one channel on disk: three in the pipeline
    raw = load_raw_images([path, grey], 16)
    assert raw.dtype == np.uint8 and raw.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(raw[1, 3, 3], [77, 77, 77])


def test_labels_follow_classes_txt_order(toy_split):
    from wbc.pipeline import load_split, split_dataset

    df = load_split(toy_split, "train")
    order = ["blue", "red", "green"]  # a different class order gives different one-hot columns
    ds = split_dataset(df, order, 16, 64)
    y = next(iter(ds))[1].numpy()
    np.testing.assert_array_equal(y.argmax(axis=1), [order.index(lab) for lab in df["label"]])


def test_shuffle_is_seeded_and_reshuffles_each_epoch(toy_split):
    from wbc.pipeline import split_dataset

    def epoch_labels(ds):
        return np.concatenate([y.numpy().argmax(1) for _, y in ds])

    ds = split_dataset(toy_split / "train.csv", CLASSES, 16, 4, shuffle=True, seed=1)
    first, second = epoch_labels(ds), epoch_labels(ds)
    again = epoch_labels(split_dataset(toy_split / "train.csv", CLASSES, 16, 4, shuffle=True, seed=1))
    assert sorted(first) == sorted(second)
    np.testing.assert_array_equal(first, again)
    unshuffled = epoch_labels(split_dataset(toy_split / "train.csv", CLASSES, 16, 4))
    np.testing.assert_array_equal(unshuffled, np.repeat([0, 1, 2], 4))


def test_augmentation_changes_pixels_not_shapes_is_seeded_and_off_by_default(toy_split):
    from wbc.pipeline import split_dataset

    def images(**kw):
        return images_of(split_dataset(toy_split / "train.csv", CLASSES, 32, 4, **kw))

    plain = images()
    np.testing.assert_array_equal(plain, images())  # no augmentation: identical every time
    a, b, c = images(augment=True, seed=3), images(augment=True, seed=3), images(augment=True, seed=4)
    assert a.shape == plain.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    assert 0.0 <= a.min() and a.max() <= 255.0  # raw pixel range kept (brightness: value_range 0-255)


def test_augmentation_layers_switches_and_settings(toy_split):
    import keras
    import tensorflow as tf

    from wbc.pipeline import label_indices, load_split

    L = lessons()
    assert [type(layer).__name__ for layer in L.augmentation_layers(rotation=0, brightness=0).layers] == [
        "RandomFlip",
        "RandomZoom",
    ]
    flip, rot, zoom, bright = L.augmentation_layers().layers  # names get suffixes: check the types
    assert isinstance(rot, keras.layers.RandomRotation) and isinstance(bright, keras.layers.RandomBrightness)
    assert rot.factor == pytest.approx((-20 / 360, 20 / 360))
    assert list(bright.value_range) == [0, 255]
    x = tf.random.uniform((2, 16, 16, 3), 0, 255, seed=1)
    np.testing.assert_array_equal(L.augmentation_layers()(x, training=False), x)  # inference: identity
    off = L.augmentation_layers(rotation=0, zoom=0, brightness=0, flips=False)
    df = load_split(toy_split, "train")
    args = (df["path"].tolist(), label_indices(df["label"], CLASSES), 3, 32, 4)
    np.testing.assert_array_equal(images_of(L.make_dataset(*args, augment=off)), images_of(L.make_dataset(*args)))


def test_cache_in_memory_and_on_disk_give_the_same_batches(toy_split, tmp_path):
    from wbc.pipeline import split_dataset

    plain = [x.numpy() for x, _ in split_dataset(toy_split / "val.csv", CLASSES, 16, 4)]
    for cache in (True, str(tmp_path / "val.cache")):
        ds = split_dataset(toy_split / "val.csv", CLASSES, 16, 4, cache=cache)
        for _ in range(2):  # second pass is served from the cache
            got = [x.numpy() for x, _ in ds]
            assert len(got) == len(plain)
            for g, want in zip(got, plain):
                np.testing.assert_array_equal(g, want)
    assert any(p.name.startswith("val.cache") for p in tmp_path.iterdir())  # the file cache was written


def test_cache_keeps_augmentation_random_and_shuffle_per_epoch(toy_split):
    from wbc.pipeline import split_dataset

    ds = split_dataset(toy_split / "train.csv", CLASSES, 16, 4, augment=True, shuffle=True, seed=2, cache=True)
    first, second = images_of(ds), images_of(ds)
    assert first.shape == second.shape and not np.array_equal(first, second)  # new views every epoch


def test_unknown_labels_and_missing_files_are_named(toy_split, tmp_path):
    from wbc.pipeline import label_indices, load_split, split_dataset

    df = load_split(toy_split, "train")
    bad = df.assign(label=["monocyte"] + ["mystery"] + list(df["label"][2:]))
    with pytest.raises(WbcError, match="monocyte, mystery"):
        split_dataset(bad, CLASSES, 16, 4)
    with pytest.raises(WbcError, match="mystery"):
        label_indices(bad["label"], CLASSES)
    gone = df.assign(path=[str(tmp_path / "gone.jpg")] + list(df["path"][1:]))
    with pytest.raises(WbcError, match="gone.jpg"):
        split_dataset(gone, CLASSES, 16, 4)
    tiff = df.assign(path=[str(tmp_path / "x.tiff")] + list(df["path"][1:]))
    (tmp_path / "x.tiff").write_bytes(b"II*\x00")
    with pytest.raises(WbcError, match="x.tiff.*preprocess"):
        split_dataset(tiff, CLASSES, 16, 4)
    with pytest.raises(WbcError, match="no images"):
        split_dataset(df.iloc[:0], CLASSES, 16, 4)
    with pytest.raises(WbcError, match="'path' and 'label'"):
        split_dataset(df.drop(columns="label"), CLASSES, 16, 4)


def test_corrupt_image_is_named(tmp_path, toy_split):
    from wbc.pipeline import find_undecodable, load_raw_images, load_split

    good = load_split(toy_split, "test")["path"].tolist()[:2]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(WbcError, match="corrupt.jpg"):
        load_raw_images(good + [str(corrupt)], 16)
    assert [p for p, _ in find_undecodable(good + [str(corrupt)])] == [str(corrupt)]
    assert load_raw_images(good, 16).shape == (2, 16, 16, 3)


def test_relative_paths_resolve_against_the_csv_folder(toy_split):
    from wbc.pipeline import load_split, split_dataset

    df = pd.read_csv(toy_split / "test.csv")
    df["path"] = [str(Path("..") / "images" / Path(p).name) for p in df["path"]]
    df.to_csv(toy_split / "relative.csv", index=False)
    x, _ = next(iter(split_dataset(toy_split / "relative.csv", CLASSES, 16, 64)))
    assert x.shape[0] == len(df)
    assert all(Path(p).is_file() for p in load_split(toy_split, "test")["path"])


def test_cnn_models_scale_raw_pixels_themselves(toy_split):
    import keras

    from wbc.pipeline import split_dataset

    L = lessons()
    x, _ = next(iter(split_dataset(toy_split / "val.csv", CLASSES, 32, 8)))  # raw pixels 0..255
    for build in (L.build_cnn1, L.build_cnn2):
        model = build(len(CLASSES), 32)
        scaled = keras.Model(model.input, model.get_layer("scale_0_1").output)(x)
        np.testing.assert_allclose(scaled.numpy(), x.numpy() / 255, rtol=1e-6)
        probs = model(x, training=False).numpy()
        assert probs.shape == (x.shape[0], len(CLASSES))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
