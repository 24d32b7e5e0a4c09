"""Readers on small folders built here: layouts, junk files, duplicates, layout errors, CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc import cli
from wbc.errors import LayoutError, WbcError
from wbc.fileio import file_digest
from wbc.labels import ALL_CLASSES, LMU_CODES, PBC_CLASSES
from wbc.readers import (
    BLOODMNIST_CLASSES,
    check_image_file,
    locate_dataset,
    read_all,
    read_bloodmnist,
    read_dataset,
    read_pbc,
    summarise_reasons,
    write_bloodmnist_folders,
)


def write_image(path: Path, seed: int, channels: int = 3) -> Path:
    """A tiny random image, encoded by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 9, channels), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def make_pbc(root: Path) -> dict[str, Path]:
    """A PBC folder with good images and every kind of junk; returns the notable paths."""
    pbc = root / "PBC_dataset_normal_DIB"
    good = {
        "basophil": ["BA_1.jpg", "BA_2.jpg"],
        "eosinophil": ["EO_1.jpg"],
        "lymphocyte": ["LY_1.jpg"],
        "monocyte": ["MO_1.jpg"],
        "erythroblast": ["ERB_1.jpg"],
        "ig": ["MMY_1.jpg", "MY_2.jpg", "PMY_3.jpg", "IG_4.jpg"],
        "neutrophil": ["BNE_1.jpg", "SNE_2.jpg", "NEUTROPHIL_3.jpg"],
    }
    for seed, (folder, names) in enumerate(good.items()):
        for i, name in enumerate(names):
            write_image(pbc / folder / name, seed * 10 + i)
    (pbc / "platelet").mkdir()  # empty class folder
    notable = {
        "zero": pbc / "basophil" / "BA_0.jpg",
        "text": pbc / "monocyte" / "MO_9.jpg",
        "ds_store": pbc / "neutrophil" / ".DS_Store",
        "ds_jpg": pbc / "neutrophil" / ".DS_169665.jpg",
        "txt": pbc / "lymphocyte" / "notes.txt",
        "unknown": pbc / "extras",
        "dup_a": pbc / "eosinophil" / "EO_1.jpg",
        "dup_b": pbc / "neutrophil" / "BNE_191112.jpg",
    }
    notable["zero"].write_bytes(b"")
    notable["text"].write_text("this is not an image\n")
    notable["ds_store"].write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    notable["ds_jpg"].write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    notable["txt"].write_text("hello")
    write_image(notable["unknown"] / "X_1.jpg", 99)
    shutil.copyfile(notable["dup_a"], notable["dup_b"])
    return notable


def make_lmu(root: Path, codes=("BAS", "MYO", "MYB", "LYA")) -> Path:
    lmu = root / "AML-Cytomorphology_LMU"
    for i, code in enumerate(codes):
        for j in range(2):
            write_image(lmu / code / f"{code}_{j:04d}.tiff", 100 + 10 * i + j, channels=4)
    return lmu


def make_all(root: Path) -> Path:
    all_root = root / "ALL_Kaggle"
    for v, version in enumerate(("Original", "Segmented")):
        for i, cls in enumerate(ALL_CLASSES):
            for j in range(2):
                stage = "Benign" if cls == "Benign" else f"Malignant-{cls}"
                write_image(all_root / version / cls / f"WBC-{stage}-{j:03d}.jpg", 200 + 50 * v + 10 * i + j)
    return all_root


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    make_pbc(root)
    make_lmu(root)
    make_all(root)
    return root


def reason_of(skipped: pd.DataFrame, path: Path) -> str:
    hits = skipped.loc[skipped["path"] == str(path.resolve()), "reason"]
    assert len(hits) >= 1, f"{path} not reported; report was:\n{skipped.to_string()}"
    return " | ".join(hits)


# ---------------------------------------------------------------- single files


def test_check_image_file_by_name_size_and_signature(tmp_path):
    assert check_image_file(write_image(tmp_path / "a.jpg", 0)) is None
    assert check_image_file(write_image(tmp_path / "a.png", 0)) is None
    assert check_image_file(write_image(tmp_path / "a.tiff", 0, channels=4)) is None
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "readme.md").write_text("# hi")
    assert check_image_file(tmp_path / "zero.jpg").startswith("empty file")
    assert check_image_file(tmp_path / "text.jpg").startswith("not an image: first bytes 6e 6f 74 20")
    assert check_image_file(tmp_path / ".DS_Store").startswith("hidden file")
    assert check_image_file(tmp_path / "readme.md").startswith("not an image: extension '.md'")


# ---------------------------------------------------------------- PBC


def test_read_pbc_keeps_images_and_reports_every_junk_item(tmp_path):
    notable = make_pbc(tmp_path)
    manifest, skipped = read_pbc(notable["zero"].parent.parent)
    assert list(manifest.columns) == ["path", "source", "source_label", "sub_label", "label"]
    assert manifest["path"].is_monotonic_increasing
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest["path"])
    assert (manifest["source"] == "PBC").all() and (manifest["label"] == manifest["source_label"]).all()
    # 13 good images + the duplicate copy; no junk in the manifest
    assert len(manifest) == 14
    names = set(manifest["path"].map(lambda p: Path(p).name))
    assert not names & {"BA_0.jpg", "MO_9.jpg", ".DS_Store", ".DS_169665.jpg", "notes.txt", "X_1.jpg"}
    assert reason_of(skipped, notable["zero"]).startswith("empty file")
    assert reason_of(skipped, notable["text"]).startswith("not an image")
    assert reason_of(skipped, notable["ds_store"]).startswith("hidden file")
    assert reason_of(skipped, notable["ds_jpg"]).startswith("hidden file")
    assert reason_of(skipped, notable["txt"]).startswith("not an image: extension")
    assert "unknown folder: 1 file" in reason_of(skipped, notable["unknown"])
    pbc = notable["zero"].parent.parent
    assert reason_of(skipped, pbc / "platelet").startswith("empty class folder")


def test_pbc_sub_labels_come_from_file_name_prefixes(data_dir):
    manifest, _ = read_dataset("pbc", data_dir)
    subs = dict(zip(manifest["path"].map(lambda p: Path(p).name), manifest["sub_label"]))
    assert {subs[n] for n in ("MMY_1.jpg", "MY_2.jpg", "PMY_3.jpg", "IG_4.jpg")} == {"MMY", "MY", "PMY", "IG"}
    assert subs["MY_2.jpg"] == "MY" and subs["MMY_1.jpg"] == "MMY"
    assert (subs["BNE_1.jpg"], subs["SNE_2.jpg"], subs["NEUTROPHIL_3.jpg"]) == ("BNE", "SNE", "NEUTROPHIL")
    assert subs["BA_1.jpg"] == "BA" and subs["ERB_1.jpg"] == "ERB"


def test_unknown_prefix_is_reported_and_kept(tmp_path):
    pbc = tmp_path / "PBC_dataset_normal_DIB"
    write_image(pbc / "ig" / "XYZ_1.jpg", 1)
    manifest, skipped = read_pbc(pbc)
    assert manifest["sub_label"].tolist() == ["XYZ"]
    assert "unknown prefix" in reason_of(skipped, pbc / "ig" / "XYZ_1.jpg")
    # the seven other class folders are reported as missing, not silently ignored
    missing = skipped[skipped["reason"].str.startswith("missing class folder")]
    assert len(missing) == len(PBC_CLASSES) - 1


def test_cross_label_duplicates_reported_but_both_rows_kept(data_dir):
    manifest, skipped = read_dataset("pbc", data_dir)
    pbc = data_dir / "PBC_dataset_normal_DIB"
    a, b = pbc / "eosinophil" / "EO_1.jpg", pbc / "neutrophil" / "BNE_191112.jpg"
    assert {str(a), str(b)} <= set(manifest["path"])
    assert str(b) in reason_of(skipped, a) and "duplicate" in reason_of(skipped, a)
    assert str(a) in reason_of(skipped, b)
    assert (skipped["reason"].str.startswith("duplicate")).sum() == 2


def test_same_size_different_content_and_same_label_copies_not_reported(tmp_path):
    pbc = tmp_path / "PBC_dataset_normal_DIB"
    for folder, name, fill in [("basophil", "BA_1.jpg", 1), ("monocyte", "MO_1.jpg", 2)]:
        (pbc / folder).mkdir(parents=True)
        (pbc / folder / name).write_bytes(b"\xff\xd8\xff" + bytes([fill]) * 200)  # equal sizes
    shutil.copyfile(pbc / "basophil" / "BA_1.jpg", pbc / "basophil" / "BA_2.jpg")  # same label
    manifest, skipped = read_pbc(pbc)
    assert len(manifest) == 3
    assert not skipped["reason"].str.startswith("duplicate").any()


def test_raw_files_are_not_modified(data_dir):
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    before = {p: file_digest(p) for p in files}
    read_dataset("pbc", data_dir)
    read_dataset("lmu", data_dir)
    read_dataset("all", data_dir, version="both")
    assert sorted(p for p in data_dir.rglob("*") if p.is_file()) == files
    assert {p: file_digest(p) for p in files} == before


def test_output_is_deterministic(data_dir):
    first, s1 = read_dataset("pbc", data_dir)
    second, s2 = read_dataset("pbc", data_dir)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(s1, s2)


# ---------------------------------------------------------------- layout errors


def test_layout_error_when_root_missing_or_wrong(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        read_pbc(tmp_path / "nowhere")
    (tmp_path / "random" / "stuff").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"none of the expected class folders.*found stuff/"):
        read_pbc(tmp_path / "random")


def test_layout_error_names_the_fix_one_level_too_deep_or_shallow(data_dir):
    pbc = data_dir / "PBC_dataset_normal_DIB"
    with pytest.raises(LayoutError, match="one level too shallow") as exc:
        read_pbc(data_dir)
    assert str(pbc) in str(exc.value)
    with pytest.raises(LayoutError, match="one level too deep") as exc:
        read_pbc(pbc / "basophil")
    assert str(pbc) in str(exc.value)
    with pytest.raises(LayoutError, match="one level too deep"):
        read_all(data_dir / "ALL_Kaggle" / "Original")
    with pytest.raises(LayoutError, match="CONTAINS PBC_dataset_normal_DIB/") as exc:
        locate_dataset("pbc", pbc)  # --data-dir given one level too deep
    assert str(data_dir) in str(exc.value)
    with pytest.raises(LayoutError, match="two levels too deep"):
        locate_dataset("pbc", pbc / "ig")
    with pytest.raises(LayoutError, match="one level too shallow") as exc:
        locate_dataset("lmu", data_dir.parent)
    assert str(data_dir) in str(exc.value)


def test_locate_dataset_reports_what_was_found(tmp_path):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(LayoutError, match=r"expected .*AML-Cytomorphology_LMU.*found something_else/"):
        locate_dataset("lmu", tmp_path)
    with pytest.raises(WbcError, match="unknown dataset"):
        locate_dataset("cifar", tmp_path)


# ---------------------------------------------------------------- LMU and ALL


def test_read_lmu_rgba_tiffs(data_dir):
    manifest, skipped = read_dataset("lmu", data_dir)
    assert len(manifest) == 8 and (manifest["source"] == "LMU").all()
    assert manifest.groupby("label").size().to_dict() == {"BAS": 2, "LYA": 2, "MYB": 2, "MYO": 2}
    assert (manifest["sub_label"] == "").all()
    missing = skipped[skipped["reason"].str.startswith("missing class folder")]
    assert len(missing) == len(LMU_CODES) - 4


def test_read_all_versions(data_dir):
    original, skipped = read_dataset("all", data_dir)
    assert set(original["version"]) == {"Original"} and len(original) == 8
    assert original.groupby("label").size().to_dict() == dict.fromkeys(ALL_CLASSES, 2)
    assert skipped.empty
    both, _ = read_dataset("all", data_dir, version="both")
    assert both.groupby("version").size().to_dict() == {"Original": 8, "Segmented": 8}
    with pytest.raises(WbcError, match="unknown ALL version"):
        read_all(data_dir / "ALL_Kaggle", version="Colour")


# ---------------------------------------------------------------- BloodMNIST


def write_npz(path: Path, per_split=(5, 2, 3), size=8, drop: str | None = None) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), per_split):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 8, (n, 1), dtype=np.uint8)
    if drop:
        arrays.pop(drop)
    np.savez(path, **arrays)
    return arrays


def test_read_bloodmnist_and_write_pbc_like_folders(tmp_path):
    arrays = write_npz(tmp_path / "bloodmnist.npz")
    data = read_bloodmnist(tmp_path / "bloodmnist.npz")
    assert data.classes == BLOODMNIST_CLASSES and data.classes[3] == "ig"
    assert data.images["train"].shape == (5, 8, 8, 3) and data.labels["val"].shape == (2,)
    manifest = write_bloodmnist_folders(data, tmp_path / "out")
    assert len(manifest) == 10 and manifest.groupby("split").size().to_dict() == {"test": 3, "train": 5, "val": 2}
    first = manifest[manifest["path"].str.endswith("_train_00000.png")].iloc[0]
    assert first["label"] == BLOODMNIST_CLASSES[int(arrays["train_labels"][0, 0])]
    pixels = cv2.cvtColor(cv2.imread(first["path"]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, arrays["train_images"][0])  # PNG is lossless, colours not swapped
    read_back, skipped = read_pbc(tmp_path / "out")  # the PBC reader understands the layout
    assert sorted(read_back["path"]) == sorted(manifest["path"])
    mtimes = {p: Path(p).stat().st_mtime_ns for p in manifest["path"]}
    again = write_bloodmnist_folders(data, tmp_path / "out")  # re-run keeps existing files
    pd.testing.assert_frame_equal(again, manifest)
    assert {p: Path(p).stat().st_mtime_ns for p in again["path"]} == mtimes


def test_read_bloodmnist_bad_files(tmp_path):
    write_npz(tmp_path / "partial.npz", drop="val_labels")
    with pytest.raises(WbcError, match="val_labels"):
        read_bloodmnist(tmp_path / "partial.npz")
    (tmp_path / "fake.npz").write_text("not a zip")
    with pytest.raises(WbcError, match="fake.npz"):
        read_bloodmnist(tmp_path / "fake.npz")
    with pytest.raises(WbcError, match="does not exist"):
        read_bloodmnist(tmp_path / "missing.npz")


# ---------------------------------------------------------------- CLI


def test_summarise_reasons_counts_kinds():
    skipped = pd.DataFrame(
        {"path": ["a", "b", "c"], "reason": ["empty file: 0 bytes", "empty file: 0 bytes", "hidden file: x"]}
    )
    assert summarise_reasons(skipped).to_dict() == {"empty file": 2, "hidden file": 1}


def test_cli_manifest_on_tmp_folder(data_dir, tmp_path, capsys):
    out = tmp_path / "out" / "pbc.csv"
    assert cli.main(["manifest", "pbc", "--data-dir", str(data_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = pd.read_csv(out, keep_default_na=False)
    skipped = pd.read_csv(out.with_name("pbc_skipped.csv"))
    assert len(manifest) == 14 and f"{len(manifest)} images" in printed
    assert re.search(r"^ig\s+4$", printed, re.MULTILINE)  # per-label counts
    assert skipped["reason"].str.startswith("hidden file").sum() == 2
    assert f"{len(skipped)} item(s) skipped or reported" in printed
    # wbc10 writes the excluded list and prints the per-source table
    out10 = tmp_path / "out" / "w.csv"
    assert cli.main(["manifest", "wbc10", "--data-dir", str(data_dir), "--out", str(out10), "--cap", "1"]) == 0
    printed = capsys.readouterr().out
    assert "PBC" in printed and "LMU" in printed and "study_a" in printed
    w = pd.read_csv(out10)
    assert w.groupby("label").size().max() == 1
    excluded = pd.read_csv(out10.with_name("w_excluded.csv"))
    assert excluded["reason"].str.startswith("over the cap").any()
    assert excluded["reason"].str.contains("LYA").any()


def test_cli_manifest_data_dir_from_environment(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WBC_DATA_DIR", str(data_dir))
    out = tmp_path / "all4.csv"
    assert cli.main(["manifest", "all4", "--version", "Segmented", "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["version"]) == {"Segmented"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["manifest", "pbc", "--out", "x.csv"], "pass --data-dir DIR or set WBC_DATA_DIR"),
        (["manifest", "pbc", "--data-dir", "/no/such/folder", "--out", "x.csv"], "does not exist"),
        (["manifest", "pbc", "--data-dir", "{tmp}", "--out", "x.csv", "--cap", "5"], "wbc10 only"),
        (["manifest", "lmu", "--data-dir", "{tmp}", "--out", "x.csv", "--version", "Original"], "all and all4 only"),
        (["manifest", "pbc", "--data-dir", "{tmp}", "--out", "x.txt"], ".csv"),
        (["manifest", "pbc", "--data-dir", "{tmp}", "--out", "x.csv"], "CONTAINS PBC_dataset_normal_DIB"),
    ],
)
def test_cli_manifest_bad_arguments_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WBC_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_cli_manifest_unknown_dataset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["manifest", "cifar10", "--data-dir", ".", "--out", "x.csv"])
    assert exc.value.code == 2
