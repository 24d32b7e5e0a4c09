"""Readers and merges on the real sample (``$WBC_REAL_SAMPLE``), checked against counts computed
here straight from the file names with os.walk, independently of the readers and the label map."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import pandas as pd
import pytest

from wbc import cli
from wbc.merge import build_all4, build_wbc10, wbc10_from_data_dir
from wbc.readers import check_image_file, read_dataset

pytestmark = pytest.mark.realsample

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}

# Study A's ten classes written out by hand (GUIDE section 3), keyed by the PBC file-name
# prefix and by the LMU class code; everything else is excluded.
PREFIX_CLASS = {
    "BA": "basophil",
    "EO": "eosinophil",
    "LY": "lymphocyte",
    "MO": "monocyte",
    "SNE": "neutrophil_segmented",
    "BNE": "neutrophil_band",
    "MY": "myelocyte",
    "PMY": "promyelocyte",
    "MMY": "metamyelocyte",
}
CODE_CLASS = {
    "BAS": "basophil",
    "EOS": "eosinophil",
    "LYT": "lymphocyte",
    "MON": "monocyte",
    "NGS": "neutrophil_segmented",
    "NGB": "neutrophil_band",
    "MYO": "myeloblast",
    "MYB": "myelocyte",
    "PMO": "promyelocyte",
    "MMZ": "metamyelocyte",
}


def walk_images(folder: Path) -> list[Path]:
    """Every visible file with an image extension under ``folder``."""
    found = []
    for parent, _dirs, files in os.walk(folder):
        found += [
            Path(parent) / f
            for f in files
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
        ]
    return found


@pytest.fixture(scope="module")
def pbc(real_sample):
    return read_dataset("pbc", real_sample)


@pytest.fixture(scope="module")
def lmu(real_sample):
    return read_dataset("lmu", real_sample)


@pytest.mark.parametrize("name, folder", [("pbc", "PBC_dataset_normal_DIB"), ("lmu", "AML-Cytomorphology_LMU")])
def test_every_real_image_is_found(real_sample, name, folder):
    manifest, _ = read_dataset(name, real_sample)
    expected = walk_images(real_sample / folder)
    assert len(expected) > 0
    assert sorted(manifest["path"]) == sorted(str(p) for p in expected)
    per_folder = Counter(p.parent.name for p in expected)
    assert manifest.groupby("label").size().to_dict() == dict(per_folder)


def test_every_real_all_image_is_found(real_sample):
    both, skipped = read_dataset("all", real_sample, version="both")
    expected = walk_images(real_sample / "ALL_Kaggle")
    assert sorted(both["path"]) == sorted(str(p) for p in expected)
    assert (
        dict(Counter((p.parent.parent.name, p.parent.name) for p in expected))
        == both.groupby(["version", "label"]).size().to_dict()
    )
    assert skipped.empty


def test_pbc_prefixes_land_in_sub_labels(pbc):
    manifest, _ = pbc
    names = manifest["path"].map(lambda p: Path(p).name)
    assert (manifest["sub_label"] == names.str.split("_").str[0]).all()
    subs = manifest.groupby("label")["sub_label"].agg(lambda s: set(s)).to_dict()
    assert subs["ig"] == {"MMY", "MY", "PMY", "IG"}
    assert subs["neutrophil"] == {"BNE", "SNE", "NEUTROPHIL"}
    assert subs["basophil"] == {"BA"} and subs["eosinophil"] == {"EO"}


def test_macos_junk_file_is_skipped_and_reported(pbc, real_sample):
    manifest, skipped = pbc
    junk = str(real_sample / "PBC_dataset_normal_DIB" / "neutrophil" / ".DS_169665.jpg")
    assert junk not in set(manifest["path"])
    reasons = skipped.loc[skipped["path"] == junk, "reason"].tolist()
    assert len(reasons) == 1 and reasons[0].startswith("hidden file")


def test_cross_class_duplicate_is_reported_and_kept(pbc, real_sample):
    manifest, skipped = pbc
    eo = str(real_sample / "PBC_dataset_normal_DIB" / "eosinophil" / "EO_225902.jpg")
    bne = str(real_sample / "PBC_dataset_normal_DIB" / "neutrophil" / "BNE_191112.jpg")
    assert {eo, bne} <= set(manifest["path"])
    dup = skipped[skipped["reason"].str.startswith("duplicate")]
    assert set(dup["path"]) == {eo, bne}
    assert bne in dup.set_index("path").loc[eo, "reason"]


def test_lmu_rgba_tiffs_recognised(lmu, real_sample):
    manifest, skipped = lmu
    assert skipped.empty
    assert manifest["label"].nunique() == 15
    for path in manifest.groupby("label")["path"].first():
        assert check_image_file(Path(path)) is None
        pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert pixels is not None and pixels.ndim == 3 and pixels.shape[2] == 4  # RGBA


def independent_wbc10_counts(real_sample: Path) -> Counter:
    counts: Counter = Counter()
    for path in walk_images(real_sample / "PBC_dataset_normal_DIB"):
        cls = PREFIX_CLASS.get(path.name.split("_")[0])
        if cls:
            counts[(cls, "PBC")] += 1
    for path in walk_images(real_sample / "AML-Cytomorphology_LMU"):
        cls = CODE_CLASS.get(path.parent.name)
        if cls:
            counts[(cls, "LMU")] += 1
    return counts


def test_wbc10_counts_match_file_names(pbc, lmu, real_sample):
    manifest, excluded = build_wbc10(pbc[0], lmu[0], cap=None)
    expected = independent_wbc10_counts(real_sample)
    assert manifest.groupby(["label", "source"]).size().to_dict() == dict(expected)
    assert len(manifest) + len(excluded) == len(pbc[0]) + len(lmu[0])
    # capped: each class keeps min(available, cap), both sources still represented
    capped, _ = build_wbc10(pbc[0], lmu[0], cap=20, seed=0)
    per_class = Counter()
    for (cls, _source), n in expected.items():
        per_class[cls] += n
    assert capped.groupby("label").size().to_dict() == {c: min(n, 20) for c, n in per_class.items()}
    sources = capped.groupby("label")["source"].nunique().to_dict()
    assert all(sources[cls] == 2 for cls, _ in expected if (cls, "PBC") in expected and (cls, "LMU") in expected)


def test_all4_counts_match_file_names(real_sample):
    for version in ("Original", "Segmented"):
        manifest, _ = build_all4(real_sample, version=version)
        expected = Counter(p.parent.name for p in walk_images(real_sample / "ALL_Kaggle" / version))
        assert manifest.groupby("label").size().to_dict() == dict(expected)


def test_cli_manifest_wbc10_on_real_sample(real_sample, tmp_path, capsys):
    out = tmp_path / "wbc10.csv"
    assert cli.main(["manifest", "wbc10", "--data-dir", str(real_sample), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = pd.read_csv(out)
    expected = independent_wbc10_counts(real_sample)
    assert len(written) == sum(expected.values())
    assert f"{len(written)} images" in printed
    for cls in {c for c, _ in expected}:
        assert cls in printed
    skipped = pd.read_csv(tmp_path / "wbc10_skipped.csv")
    assert skipped["path"].str.endswith(".DS_169665.jpg").any()
    assert (tmp_path / "wbc10_excluded.csv").is_file()
    m1, _, _ = wbc10_from_data_dir(real_sample)  # re-run gives the same rows
    assert sorted(m1["path"]) == sorted(written["path"])


def test_cli_entry_point_runs_as_module(real_sample, tmp_path):
    out = tmp_path / "pbc.csv"
    result = subprocess.run(
        [sys.executable, "-m", "wbc", "manifest", "pbc", "--data-dir", str(real_sample), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "hidden file: 1" in result.stdout and "duplicate: 2" in result.stdout
    assert len(pd.read_csv(out)) == len(walk_images(real_sample / "PBC_dataset_normal_DIB"))
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "wbc",
            "manifest",
            "pbc",
            "--data-dir",
            str(real_sample / "PBC_dataset_normal_DIB"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "one level too deep" in bad.stderr
