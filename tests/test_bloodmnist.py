"""BloodMNIST as a dataset choice of the notebooks: a small ``.npz`` written here in MedMNIST's
format (keys ``train_images``, ``train_labels``, ``val_images``, ...; images (N, H, W, 3) uint8,
labels (N, 1) uint8), read by the course's stages with MedMNIST's own split kept.

Run as a script, this file writes such an ``.npz`` (to try the notebooks on it):

    .venv/bin/python tests/test_bloodmnist.py /tmp/bm 64   # -> /tmp/bm/bloodmnist_64.npz
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbc import course
from wbc.errors import WbcError
from wbc.readers import BLOODMNIST_CLASSES, bloodmnist_size, locate_bloodmnist, read_bloodmnist

#: BloodMNIST class -> the demo cell type drawn for it (ig and neutrophil hold several in PBC)
DRAWN = {
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "erythroblast": "erythroblast",
    "ig": "myelocyte",
    "lymphocyte": "lymphocyte",
    "monocyte": "monocyte",
    "neutrophil": "neutrophil_segmented",
    "platelet": "platelet",
}


def write_fake_bloodmnist(path: Path, size: int = 28, per_class=(6, 2, 3), seed: int = 0) -> dict[str, np.ndarray]:
    """Write a BloodMNIST-format ``.npz``: ``per_class`` (train, val, test) synthetic cells per class,
    ``size`` px, labels as MedMNIST stores them ((N, 1) uint8). Returns the arrays."""
    import cv2

    from wbc.demo import draw_cell_image

    arrays = {}
    for k, (split, n) in enumerate(zip(("train", "val", "test"), per_class)):
        images, labels = [], []
        for label, name in enumerate(BLOODMNIST_CLASSES):
            for i in range(n):
                bgr = draw_cell_image(DRAWN[name], "PBC", seed=seed * 100_000 + k * 10_000 + label * 1000 + i)
                small = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
                images.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
                labels.append(label)
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.fixture(scope="module")
def bm_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bm")
    write_fake_bloodmnist(root / "bloodmnist_64.npz", size=64)
    return root


def test_locate_picks_the_smallest_file_that_needs_no_upscaling(tmp_path):
    for name in ("bloodmnist.npz", "bloodmnist_64.npz", "bloodmnist_224.npz", "bloodmnist_x.npz"):
        (tmp_path / name).write_bytes(b"")
    assert locate_bloodmnist(tmp_path, 64).name == "bloodmnist_64.npz"
    assert locate_bloodmnist(tmp_path, 80).name == "bloodmnist_224.npz"
    assert locate_bloodmnist(tmp_path, 300).name == "bloodmnist_224.npz"  # none big enough: the largest
    assert locate_bloodmnist(tmp_path).name == "bloodmnist.npz"
    assert bloodmnist_size("bloodmnist.npz") == 28 and bloodmnist_size("bloodmnist_128.npz") == 128
    with pytest.raises(WbcError, match="bloodmnist_x.npz"):
        bloodmnist_size(tmp_path / "bloodmnist_x.npz")
    with pytest.raises(WbcError, match=r"no bloodmnist.npz .* in .*empty.*download bloodmnist"):
        locate_bloodmnist(tmp_path / "empty")


def test_reader_on_a_medmnist_format_file(tmp_path):
    arrays = write_fake_bloodmnist(tmp_path / "bloodmnist_64.npz", size=64, per_class=(2, 1, 1))
    data = read_bloodmnist(tmp_path / "bloodmnist_64.npz")
    assert {s: len(y) for s, y in data.labels.items()} == {"train": 16, "val": 8, "test": 8}
    assert data.images["train"].shape == (16, 64, 64, 3) and data.images["train"].dtype == np.uint8
    assert np.array_equal(data.images["val"], arrays["val_images"])
    assert np.array_equal(data.labels["test"], arrays["test_labels"].ravel())


def test_reader_names_the_file_and_the_reason(tmp_path):
    arrays = write_fake_bloodmnist(tmp_path / "good.npz", size=28, per_class=(1, 1, 1))
    whole = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WbcError, match=r"cut\.npz is not a readable \.npz file"):
        read_bloodmnist(tmp_path / "cut.npz")
    np.savez(tmp_path / "float.npz", **{**arrays, "train_images": arrays["train_images"].astype(np.float32)})
    with pytest.raises(WbcError, match=r"float\.npz: train arrays are float32"):
        read_bloodmnist(tmp_path / "float.npz")
    np.savez(tmp_path / "label9.npz", **{**arrays, "test_labels": arrays["test_labels"] + 5})
    with pytest.raises(WbcError, match=r"label9\.npz: test_labels outside 0..7"):
        read_bloodmnist(tmp_path / "label9.npz")
    assert zipfile.is_zipfile(tmp_path / "good.npz")  # an .npz is a zip of .npy arrays


def test_dataset_choice_keeps_the_official_split(bm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    ctx = course.setup_notebook("t", profile="ci", data_dir=bm_dir, dataset="bloodmnist", verbose=False)
    assert ctx.datasets == ("BloodMNIST",) and ctx.has("bloodmnist") and not ctx.has("wbc10")
    split_dir = course.ensure_splits(ctx, "bloodmnist")
    data = read_bloodmnist(bm_dir / "bloodmnist_64.npz")
    assert (split_dir / "classes.txt").read_text().split() == list(BLOODMNIST_CLASSES)
    for split in ("train", "val", "test"):
        part = pd.read_csv(split_dir / f"{split}.csv", keep_default_na=False)
        assert set(part["split"]) == {split}
        expected = pd.Series([BLOODMNIST_CLASSES[i] for i in data.labels[split]]).value_counts().sort_index()
        assert part["label"].value_counts().sort_index().to_dict() == expected.to_dict()
        assert {"group", "sha256", "phash"} <= set(part.columns)
    official_val = (split_dir / "val.csv").read_text()
    processed = pd.read_csv(ctx.work_dir / "processed" / "bloodmnist" / "manifest.csv", keep_default_na=False)
    assert len(processed) == sum(len(y) for y in data.labels.values())  # nothing quarantined
    import cv2

    first = cv2.imread(str(processed["path"].iloc[0]))
    assert first.shape == (64, 64, 3)  # ci preprocess_size is 96: never upscaled past the file's 64 px
    assert ctx.profile.preprocess_size == 64  # the ci profile's 96, lowered to the file's own size
    resplit = course.ensure_splits(ctx, "bloodmnist", fractions=(0.5, 0.25, 0.25))  # asked for: split again, apart
    assert resplit.name == "bloodmnist_50_25_25" and resplit.parent == split_dir.parent
    sizes = {part: len(pd.read_csv(resplit / f"{part}.csv")) for part in ("train", "val", "test")}
    assert sum(sizes.values()) == 88 and sizes["val"] > len(data.labels["val"])  # 16 official val images
    assert course.ensure_splits(ctx, "bloodmnist") == split_dir  # the official split, reused, untouched
    assert (split_dir / "val.csv").read_text() == official_val


def test_a_changed_file_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    npz = tmp_path / "bm" / "bloodmnist_64.npz"
    write_fake_bloodmnist(npz, size=64, per_class=(1, 1, 1))
    ctx = course.setup_notebook("t", profile="ci", data_dir=npz.parent, dataset="bloodmnist", verbose=False)
    first = pd.read_csv(course.ensure_manifest(ctx, "bloodmnist"))
    write_fake_bloodmnist(npz, size=64, per_class=(2, 1, 1), seed=1)
    second = pd.read_csv(course.ensure_manifest(ctx, "bloodmnist"))
    assert (len(first), len(second)) == (24, 32)
    assert all(Path(p).is_file() for p in second["path"])


def test_downloaded_file_goes_straight_into_the_notebooks(loopback_server, tmp_path, monkeypatch):
    """download bloodmnist (from a server on 127.0.0.1, MD5-checked) -> the course's official split."""
    import functools
    import hashlib
    from dataclasses import replace
    from http.server import SimpleHTTPRequestHandler
    from types import SimpleNamespace

    from wbc import download

    served = tmp_path / "served"
    write_fake_bloodmnist(served / "bloodmnist_64.npz", size=64, per_class=(2, 1, 1))
    md5 = hashlib.md5((served / "bloodmnist_64.npz").read_bytes()).hexdigest()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    state = loopback_server(handler, SimpleNamespace())
    monkeypatch.setitem(download.REGISTRY, "bloodmnist", replace(download.REGISTRY["bloodmnist"], md5={64: md5}))
    monkeypatch.setattr(download, "BLOODMNIST_SPLITS", {"train": 16, "val": 8, "test": 8})
    data_dir = tmp_path / "data"
    result = download.download_dataset(
        "bloodmnist", data_dir, size=64, url=state.url("/bloodmnist_64.npz"), progress=False
    )
    assert result.path == data_dir / "bloodmnist_64.npz" and result.report.complete
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    ctx = course.setup_notebook("t", profile="ci", data_dir=data_dir, dataset="bloodmnist", verbose=False)
    split_dir = course.ensure_splits(ctx, "bloodmnist")
    sizes = {part: len(pd.read_csv(split_dir / f"{part}.csv")) for part in ("train", "val", "test")}
    assert sizes == {"train": 16, "val": 8, "test": 8}


def test_a_lesson_built_on_wbc10_says_so_and_runs_on_it(bm_dir, demo_root, tmp_path, monkeypatch, capsys):
    """Notebooks 03, 04 and 13 (``about="wbc10"``) asked for bloodmnist: wbc10 from the folder's PBC/LMU."""
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    both = tmp_path / "both"
    both.mkdir()
    (both / "bloodmnist_64.npz").symlink_to(bm_dir / "bloodmnist_64.npz")
    (both / "PBC_dataset_normal_DIB").symlink_to(demo_root / "PBC_dataset_normal_DIB")
    ctx = course.setup_notebook("t", profile="ci", data_dir=both, dataset="bloodmnist", about="wbc10")
    assert ctx.dataset == "wbc10" and ctx.data_dir == both.resolve() and not ctx.is_demo
    assert "lesson is built on 'wbc10'" in capsys.readouterr().out
    plain = course.setup_notebook("t", profile="ci", data_dir=both, dataset="bloodmnist", verbose=False)
    assert plain.dataset == "bloodmnist"  # without ``about`` the choice stands


def test_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    ctx = course.setup_notebook("t", profile="ci", data_dir=tmp_path / "empty", dataset="bloodmnist", verbose=False)
    with pytest.raises(WbcError, match=r"bloodmnist\[_SIZE\]\.npz.*download bloodmnist"):
        course.ensure_splits(ctx, "bloodmnist")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bm")
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    target = out / ("bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz")
    write_fake_bloodmnist(target, size=size)
    print(f"wrote {target}")
