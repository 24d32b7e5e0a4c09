"""The synthetic demo data: layouts and names like the real releases, formats, quirks, determinism."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from wbc import cli
from wbc.demo import CELL_TYPES, QUIRKS, SOURCES, draw_cell_image, generate_demo
from wbc.errors import WbcError
from wbc.fileio import file_digest

PBC = "PBC_dataset_normal_DIB"
LMU = "AML-Cytomorphology_LMU"
ALL = "ALL_Kaggle"
PER_CLASS = 6  # what the shared ``demo_root`` fixture generates

PBC_PREFIXES = {
    "basophil": {"BA"},
    "eosinophil": {"EO"},
    "erythroblast": {"ERB"},
    "ig": {"MMY", "MY", "PMY", "IG"},
    "lymphocyte": {"LY"},
    "monocyte": {"MO"},
    "neutrophil": {"BNE", "SNE", "NEUTROPHIL"},
    "platelet": {"PLATELET"},
}
LMU_CODES = {"BAS", "EBO", "EOS", "KSC", "LYA", "LYT", "MMZ", "MOB", "MON", "MYB", "MYO", "NGB", "NGS", "PMB", "PMO"}
ALL_STEMS = {
    "Benign": "WBC-Benign",
    "Early": "WBC-Malignant-Early",
    "Pre": "WBC-Malignant-Pre",
    "Pro": "WBC-Malignant-Pro",
}
JUNK = ".DS_169665.jpg"


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def prefix(name: str) -> str:
    return name.rsplit("_", 1)[0]


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def black_band(image: np.ndarray, width: int = 10) -> bool:
    """A strip of at least ``width`` (near) black rows or columns on one edge."""
    grey = image[..., :3].max(axis=2)
    strips = (grey[:width], grey[-width:], grey[:, :width], grey[:, -width:])
    return any(int(s.max()) < 25 for s in strips)


# ----------------------------------------------------------------------------- layout and names


def test_pbc_folders_prefixes_and_counts(demo_root):
    pbc = demo_root / PBC
    assert {p.name for p in pbc.iterdir()} == set(PBC_PREFIXES)
    for folder, prefixes in PBC_PREFIXES.items():
        names = [p.name for p in files(pbc / folder) if p.name != JUNK]
        assert {prefix(n) for n in names} == prefixes, folder
        for n in names:
            assert re.fullmatch(r"[A-Z]+_[1-9]\d{0,5}\.jpg", n), n
        counts = Counter(prefix(n) for n in names)
        extra = {"BNE": 1} if folder == "neutrophil" else {}  # the eosinophil filed twice
        assert counts == {p: PER_CLASS + extra.get(p, 0) for p in prefixes}, folder
    ids = [p.name.split("_")[-1] for p in pbc.rglob("*.jpg") if p.name != JUNK]
    assert len(ids) == len(set(ids)), "PBC image ids must be unique across the dataset"


def test_lmu_codes_and_names(demo_root):
    lmu = demo_root / LMU
    assert {p.name for p in lmu.iterdir()} == LMU_CODES
    for code in LMU_CODES:
        names = [p.name for p in files(lmu / code)]
        assert len(names) == PER_CLASS
        assert all(re.fullmatch(rf"{code}_\d{{4}}\.tiff", n) for n in names), names


def test_all_versions_share_names(demo_root):
    root = demo_root / ALL
    assert {p.name for p in root.iterdir()} == {"Original", "Segmented"}
    for klass, stem in ALL_STEMS.items():
        original = [p.name for p in files(root / "Original" / klass)]
        segmented = [p.name for p in files(root / "Segmented" / klass)]
        assert original == segmented
        assert len(original) == PER_CLASS + (klass == "Pro")  # Pro holds one extra twin
        assert all(re.fullmatch(rf"{stem}-\d{{3}}\.jpg", n) for n in original), original


def name_shapes(root: Path) -> set[tuple[str, str]]:
    """(folder relative to root, name with PBC ids collapsed and other digit runs as '#')."""
    shapes = set()
    for path in root.rglob("*"):
        if path.is_file():
            name = re.sub(r"_\d+\.jpg$", "_ID.jpg", path.name) if root.name == PBC else path.name
            shapes.add((str(path.parent.relative_to(root)), re.sub(r"\d", "#", name)))
    return shapes


@pytest.mark.parametrize("dataset", [PBC, LMU, ALL])
def test_layout_matches_real_sample(demo_root, real_sample, dataset):
    assert name_shapes(demo_root / dataset) == name_shapes(real_sample / dataset)


def test_tiff_reads_like_real_sample(demo_root, real_sample):
    ours = next((demo_root / LMU / "NGS").iterdir())
    real = next((real_sample / LMU / "NGS").iterdir())
    with Image.open(ours) as a, Image.open(real) as b:
        assert (a.mode, a.size, a.info.get("compression")) == (b.mode, b.size, b.info.get("compression"))
        assert set(a.tag_v2) == set(b.tag_v2)
    for path in (ours, real):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (400, 400, 4) and image.dtype == np.uint8


# ----------------------------------------------------------------------------- formats


def test_image_sizes_and_modes(demo_root):
    for path in (demo_root / PBC).rglob("*.jpg"):
        if path.name != JUNK:
            assert cv2.imread(str(path)).shape == (363, 360, 3), path
    for path in (demo_root / LMU).glob("*/*"):
        assert path.suffix == ".tiff"
        rgba = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert rgba.shape == (400, 400, 4), path
        assert (rgba[..., 3] == 255).all(), path
        assert path.stat().st_size > 400 * 400 * 4  # uncompressed
    with Image.open(next((demo_root / LMU / "BAS").iterdir())) as tiff:
        assert tiff.mode == "RGBA" and tiff.size == (400, 400) and tiff.info["compression"] == "raw"
    for path in (demo_root / ALL).rglob("*.jpg"):
        assert cv2.imread(str(path)).shape == (224, 224, 3), path


def test_tiff_channel_order_is_rgba(demo_root):
    path = next((demo_root / LMU / "EOS").iterdir())
    bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    with Image.open(path) as tiff:
        rgba = np.asarray(tiff)
    np.testing.assert_array_equal(bgra[..., [2, 1, 0, 3]], rgba)


def test_segmented_is_cells_on_black(demo_root):
    for path in (demo_root / ALL / "Segmented").rglob("*.jpg"):
        seg = cv2.imread(str(path))
        orig = cv2.imread(str(path).replace("Segmented", "Original"))
        assert np.mean(seg.max(axis=2) < 30) > 0.5, path  # mostly black
        assert np.mean(orig.max(axis=2) < 30) < 0.01, path  # the original is a bright field
        assert seg.max() > 150, path  # but cells are there


# ----------------------------------------------------------------------------- the returned frame


def test_returned_frame_lists_every_file(tmp_path):
    frame = generate_demo(tmp_path, per_class=1, seed=1)
    assert list(frame.columns) == ["path", "dataset", "folder", "label", "quirk"]
    on_disk = {str(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert set(frame["path"]) == on_disk and len(frame) == len(on_disk)
    assert set(frame["dataset"]) == {"PBC", "LMU", "ALL"}
    assert set(frame["quirk"]) == {"", *QUIRKS}
    drawn = frame[frame["quirk"] != "non_image"]
    assert set(drawn["label"]) <= set(CELL_TYPES)
    assert frame.loc[frame["quirk"] == "non_image", "label"].tolist() == [""]


def test_same_cell_type_for_merged_classes():
    """A PBC prefix and the LMU code merged with it into a wbc10 class draw the same cell."""
    pairs = {
        ("neutrophil", "SNE"): "NGS",
        ("neutrophil", "BNE"): "NGB",
        ("ig", "MY"): "MYB",
        ("ig", "PMY"): "PMO",
        ("ig", "MMY"): "MMZ",
        ("basophil", "BA"): "BAS",
        ("eosinophil", "EO"): "EOS",
        ("lymphocyte", "LY"): "LYT",
        ("monocyte", "MO"): "MON",
    }
    for (folder, pre), code in pairs.items():
        assert SOURCES["PBC"][folder][pre] == SOURCES["LMU"][code][code], code
    assert SOURCES["LMU"]["MYO"]["MYO"] == "myeloblast"
    assert SOURCES["LMU"]["MYB"]["MYB"] == "myelocyte"


def test_labels_follow_the_folders(tmp_path):
    """What is drawn matches the folder and prefix; the unspecified IG_ prefix holds a mix."""
    frame = generate_demo(tmp_path, per_class=2, seed=0)
    names = frame["path"].map(lambda p: Path(p).name)
    sne = frame[names.str.startswith("SNE_")]
    assert set(sne["label"]) == {"neutrophil_segmented"}
    ig = frame[names.str.startswith("IG_")]
    assert set(ig["label"]) <= {"metamyelocyte", "myelocyte", "promyelocyte"}
    lmu = frame[frame["dataset"] == "LMU"].groupby("folder")["label"].agg(set)
    assert lmu["MYO"] == {"myeloblast"} and lmu["MYB"] == {"myelocyte"}
    assert lmu["NGS"] == {"neutrophil_segmented"}
    assert set(frame.loc[frame["folder"] == "Original/Pro", "label"]) == {"lymphoblast_pro"}


# ----------------------------------------------------------------------------- quirks


def test_quirks_present(demo_root):
    junk = demo_root / PBC / "neutrophil" / JUNK
    assert junk.read_bytes().startswith(b"\x00\x00\x00\x01Bud1")
    assert cv2.imread(str(junk)) is None
    by_digest: dict[str, list[Path]] = {}
    for path in (demo_root / PBC).rglob("*.jpg"):
        by_digest.setdefault(file_digest(path), []).append(path)
    pairs = [sorted(p.parent.name for p in ps) for ps in by_digest.values() if len(ps) > 1]
    assert pairs == [["eosinophil", "neutrophil"]]
    for version in ("Original", "Segmented"):
        pro = Counter(file_digest(p) for p in (demo_root / ALL / version / "Pro").iterdir())
        assert sorted(pro.values())[-2:] == [1, 2], version  # exactly one byte-identical pair
    banded = Counter()
    for dataset, pattern in ((PBC, "*.jpg"), (LMU, "*.tiff")):
        for path in (demo_root / dataset).rglob(pattern):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is not None and black_band(image):
                banded[dataset] += 1
    assert banded == {PBC: 2, LMU: 1}


def test_no_quirks(tmp_path):
    frame = generate_demo(tmp_path, per_class=1, seed=0, quirks=False)
    assert set(frame["quirk"]) == {""}
    assert not (tmp_path / PBC / "neutrophil" / JUNK).exists()
    hashes = [file_digest(p) for p in tmp_path.rglob("*") if p.is_file() and "Segmented" not in str(p)]
    assert len(hashes) == len(set(hashes))
    for path in (tmp_path / PBC).rglob("*.jpg"):
        assert not black_band(cv2.imread(str(path))), path


# ----------------------------------------------------------------------------- determinism, re-runs


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate_demo(tmp_path / "a", per_class=1, seed=3)
    generate_demo(tmp_path / "b", per_class=1, seed=3)
    generate_demo(tmp_path / "c", per_class=1, seed=4)
    a, b, c = (digests(tmp_path / x) for x in "abc")
    assert a == b
    assert set(a.values()).isdisjoint(c.values())


def test_rerun_keeps_files_and_cleans_temporaries(tmp_path):
    generate_demo(tmp_path, per_class=1, seed=0)
    before = digests(tmp_path)
    some = next((tmp_path / LMU / "MON").iterdir())
    mtime = some.stat().st_mtime_ns
    leftover = some.parent / f".{some.name}.abc123.part.tiff"  # what an interrupted write leaves
    leftover.write_bytes(b"half")
    generate_demo(tmp_path, per_class=1, seed=0)
    assert digests(tmp_path) == before
    assert some.stat().st_mtime_ns == mtime  # identical files are not rewritten
    assert not leftover.exists()


def test_refuses_folder_with_other_files(tmp_path):
    stranger = tmp_path / PBC / "basophil" / "BA_1.jpg"
    stranger.parent.mkdir(parents=True)
    stranger.write_bytes(b"a real image, say")
    with pytest.raises(WbcError, match="BA_1.jpg"):
        generate_demo(tmp_path, per_class=1)
    assert stranger.read_bytes() == b"a real image, say"


@pytest.mark.parametrize("per_class", [0, -2, 1.5, True])
def test_bad_per_class(tmp_path, per_class):
    with pytest.raises(WbcError, match="per_class"):
        generate_demo(tmp_path, per_class=per_class)


def test_draw_cell_image_rejects_unknown_type():
    with pytest.raises(WbcError, match="unknown cell type"):
        draw_cell_image("dragon")


def test_cell_types_look_different():
    """The centre of a lymphocyte is darker than a neutrophil's, an eosinophil's is redder."""

    def centre(cell: str, seed: int) -> np.ndarray:
        image = draw_cell_image(cell, "PBC", seed).astype(float)
        return image[150:213, 150:210].reshape(-1, 3).mean(axis=0)  # BGR

    for seed in range(3):
        lym, neu, eos = (centre(c, seed) for c in ("lymphocyte", "neutrophil_segmented", "eosinophil"))
        assert lym.sum() < neu.sum()
        assert eos[2] - eos[1] > neu[2] - neu[1]


# ----------------------------------------------------------------------------- command line


def test_cli_writes_layout(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--per-class", "1", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "PBC" in out and "LMU" in out and "ALL" in out
    assert {p.name for p in (tmp_path / PBC).iterdir()} == set(PBC_PREFIXES)
    assert {p.name for p in (tmp_path / LMU).iterdir()} == LMU_CODES
    assert (tmp_path / PBC / "neutrophil" / JUNK).exists()


def test_cli_no_quirks(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--per-class", "1", "--no-quirks"]) == 0
    assert not (tmp_path / PBC / "neutrophil" / JUNK).exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_cli_rejects_bad_per_class(tmp_path, capsys, value):
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--per-class", value]) == 2
    assert "--per-class must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_all_fields_centre_one_dominant_cell_that_grows_benign_to_pro(tmp_path):
    """ALL fields centre one dominant white cell (the class signal small CNNs must see at
    64-96 px); it is larger in Pro than in Benign (Segmented masks show the cells alone)."""
    generate_demo(tmp_path, per_class=2, seed=0, quirks=False)
    largest: dict[str, list[int]] = {}
    for klass in ALL_STEMS:
        for path in files(tmp_path / ALL / "Segmented" / klass):
            cells = (cv2.imread(str(path)).max(axis=2) > 30).astype(np.uint8)
            assert cells[80:144, 80:144].any(), path  # a cell near the centre
            n, _, stats, _ = cv2.connectedComponentsWithStats(cells)
            largest.setdefault(klass, []).append(int(stats[1:, cv2.CC_STAT_AREA].max()))
    assert min(largest["Pro"]) > max(largest["Benign"]), largest
