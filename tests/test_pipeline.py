"""tf.data input pipeline: shapes, dtypes, value ranges, label order, augmentation, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbc.errors import WbcError

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (0, 0, 230), "green": (0, 200, 0), "blue": (230, 0, 0)}  # BGR for cv2


def write_toy_split(root: Path, per_class: int = 8, size: int = 48, seed: int = 0,
                    classes: list[str] = CLASSES) -> Path:
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


def test_read_classes_and_load_split(toy_split):
    from wbc.pipeline import load_split, read_classes

    assert read_classes(toy_split) == CLASSES
    train = load_split(toy_split, "train")
    assert len(train) == 12 and set(train["label"]) == set(CLASSES)
    with pytest.raises(WbcError, match="unknown split"):
        load_split(toy_split, "training")
    with pytest.raises(WbcError, match="classes.txt"):
        read_classes(toy_split.parent)


@pytest.mark.parametrize("preprocessing", ["unit", "resnet50"])
def test_batches_have_shapes_dtypes_and_ranges(toy_split, preprocessing):
    import tensorflow as tf

    from wbc.pipeline import make_dataset

    ds = make_dataset(toy_split / "train.csv", CLASSES, 32, 5, preprocessing=preprocessing)
    batches = list(ds)
    assert [int(x.shape[0]) for x, _ in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.shape == (5, 32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (5, 3) and y.dtype == tf.float32
    np.testing.assert_array_equal(y.numpy().sum(axis=1), 1.0)
    values = np.concatenate([b[0].numpy().ravel() for b in batches])
    if preprocessing == "unit":
        assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.5
    else:  # caffe mode: BGR minus the ImageNet mean, not scaled
        assert values.min() < -50 and values.max() > 50


def test_resnet50_preprocessing_is_bgr_minus_imagenet_mean(tmp_path):
    import cv2

    from wbc.pipeline import load_images, load_raw_images

    path = tmp_path / "flat.png"  # PNG: lossless, so the pixel values are exact
    cv2.imwrite(str(path), np.full((16, 16, 3), (30, 20, 10), np.uint8))  # BGR on disk = RGB (10, 20, 30)
    raw = load_raw_images([path], 16)
    assert raw.dtype == np.uint8 and raw.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(raw[0, 0, 0], [10, 20, 30])
    x = load_images([path], 16, "resnet50")
    np.testing.assert_allclose(x[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-3)
    np.testing.assert_allclose(load_images([path], 16, "unit")[0, 0, 0], np.array([10, 20, 30]) / 255, atol=1e-6)


def test_labels_follow_classes_txt_order(toy_split):
    from wbc.pipeline import load_split, make_dataset

    df = load_split(toy_split, "train")
    order = ["blue", "red", "green"]  # a different class order gives different one-hot columns
    ds = make_dataset(df, order, 16, 64)
    y = next(iter(ds))[1].numpy()
    np.testing.assert_array_equal(y.argmax(axis=1), [order.index(lab) for lab in df["label"]])


def test_shuffle_is_seeded_and_reshuffles_each_epoch(toy_split):
    from wbc.pipeline import make_dataset

    def epoch_labels(ds):
        return np.concatenate([y.numpy().argmax(1) for _, y in ds])

    ds = make_dataset(toy_split / "train.csv", CLASSES, 16, 4, shuffle=True, seed=1)
    first, second = epoch_labels(ds), epoch_labels(ds)
    again = epoch_labels(make_dataset(toy_split / "train.csv", CLASSES, 16, 4, shuffle=True, seed=1))
    assert sorted(first) == sorted(second)
    np.testing.assert_array_equal(first, again)
    unshuffled = epoch_labels(make_dataset(toy_split / "train.csv", CLASSES, 16, 4))
    np.testing.assert_array_equal(unshuffled, np.repeat([0, 1, 2], 4))


def test_augmentation_is_seeded_and_off_by_default(toy_split):
    from wbc.pipeline import make_dataset

    def images(**kw):
        return np.concatenate([x.numpy() for x, _ in make_dataset(toy_split / "train.csv", CLASSES, 32, 4, **kw)])

    plain = images()
    np.testing.assert_array_equal(plain, images())  # no augmentation: identical every time
    a, b, c = images(augment=True, seed=3), images(augment=True, seed=3), images(augment=True, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, plain)
    assert 0.0 <= a.min() and a.max() <= 1.0  # augmentation runs before preprocessing


def test_augment_config_switches(toy_split):
    from wbc.pipeline import AugmentConfig, augmentation_layers, make_dataset

    names = [layer.name for layer in augmentation_layers(AugmentConfig(rotation=0, brightness=0)).layers]
    assert names == ["random_flip", "random_zoom"]
    rot = augmentation_layers(AugmentConfig()).get_layer("random_rotation")
    assert rot.factor == pytest.approx((-20 / 360, 20 / 360))
    assert list(augmentation_layers(AugmentConfig()).get_layer("random_brightness").value_range) == [0, 255]
    off = AugmentConfig(rotation=0, flip_horizontal=False, flip_vertical=False, zoom=0, brightness=0)
    plain = next(iter(make_dataset(toy_split / "train.csv", CLASSES, 32, 4)))[0].numpy()
    np.testing.assert_array_equal(next(iter(make_dataset(toy_split / "train.csv", CLASSES, 32, 4,
                                                         augment=off)))[0].numpy(), plain)


def test_cache_in_memory_and_on_disk_give_the_same_batches(toy_split, tmp_path):
    from wbc.pipeline import make_dataset

    plain = [x.numpy() for x, _ in make_dataset(toy_split / "val.csv", CLASSES, 16, 4)]
    for cache in (True, str(tmp_path / "val.cache")):
        ds = make_dataset(toy_split / "val.csv", CLASSES, 16, 4, cache=cache)
        for _ in range(2):  # second pass is served from the cache
            for got, want in zip([x.numpy() for x, _ in ds], plain):
                np.testing.assert_array_equal(got, want)


def test_unknown_labels_and_missing_files_are_named(toy_split, tmp_path):
    from wbc.pipeline import load_split, make_dataset

    df = load_split(toy_split, "train")
    bad = df.assign(label=["monocyte"] + ["mystery"] + list(df["label"][2:]))
    with pytest.raises(WbcError, match="monocyte, mystery"):
        make_dataset(bad, CLASSES, 16, 4)
    gone = df.assign(path=[str(tmp_path / "gone.jpg")] + list(df["path"][1:]))
    with pytest.raises(WbcError, match="gone.jpg"):
        make_dataset(gone, CLASSES, 16, 4)
    tiff = df.assign(path=[str(tmp_path / "x.tiff")] + list(df["path"][1:]))
    (tmp_path / "x.tiff").write_bytes(b"II*\x00")
    with pytest.raises(WbcError, match="x.tiff.*preprocess"):
        make_dataset(tiff, CLASSES, 16, 4)
    with pytest.raises(WbcError, match="unknown preprocessing"):
        make_dataset(df, CLASSES, 16, 4, preprocessing="imagenet")


def test_corrupt_image_is_named_by_load_images(tmp_path, toy_split):
    from wbc.pipeline import load_images, load_split

    good = load_split(toy_split, "test")["path"].tolist()[:2]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(WbcError, match="corrupt.jpg"):
        load_images(good + [str(corrupt)], 16, "unit")
    assert load_images(good, 16, "unit").shape == (2, 16, 16, 3)


def test_relative_paths_resolve_against_the_csv_folder(toy_split, tmp_path):
    from wbc.pipeline import load_split

    df = pd.read_csv(toy_split / "test.csv")
    df["path"] = [str(Path("..") / "images" / Path(p).name) for p in df["path"]]
    df.to_csv(toy_split / "relative.csv", index=False)
    from wbc.pipeline import make_dataset

    x, _ = next(iter(make_dataset(toy_split / "relative.csv", CLASSES, 16, 64)))
    assert x.shape[0] == len(df)
    assert all(Path(p).is_file() for p in load_split(toy_split, "test")["path"])
