"""Duplicate-aware stratified splits and the leakage audit."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc.cli import main as cli_main
from wbc.errors import WbcError
from wbc.split import (
    PHASH_THRESHOLD,
    PIXEL_THRESHOLD,
    SPLITS,
    audit_splits,
    content_hashes,
    duplicate_groups,
    hamming,
    near_duplicate_pairs,
    perceptual_hash,
    pixel_distance,
    split_manifest,
)


def random_hashes(n: int, seed: int = 0) -> list[str]:
    """Distinct random 64-bit hashes, pairwise more than 4 bits apart."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        h = f"{int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)):016x}"
        if all(hamming(h, o) > 8 for o in out):
            out.append(h)
    return out


def synthetic_manifest(per_class: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """A manifest with ready-made hashes (no image files needed): one distinct image per row."""
    labels = [label for label, n in per_class.items() for _ in range(n)]
    hashes = random_hashes(len(labels), seed)
    return pd.DataFrame(
        {
            "path": [f"/data/{label}/img_{i:04d}.jpg" for i, label in enumerate(labels)],
            "source": "PBC",
            "label": labels,
            "sha256": [f"{i:064x}" for i in range(len(labels))],
            "phash": hashes,
        }
    )


def cell_image(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 225, np.uint8)
    for _ in range(4):
        cv2.circle(
            img,
            tuple(int(v) for v in rng.integers(0, size, 2)),
            int(rng.integers(8, 30)),
            tuple(int(v) for v in rng.integers(40, 200, 3)),
            -1,
        )
    return img


def look_alike_cell(seed: int, size: int = 96) -> np.ndarray:
    """Like the demo cells: a smooth background and one centred round cell, the same for every
    seed; only the nucleus (position and size) differs."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.linspace(215, 235, size).astype(np.uint8)[None, :, None]
    c = size // 2
    cv2.circle(img, (c, c), size // 3, (205, 170, 200), -1, cv2.LINE_AA)
    dx, dy = (int(v) for v in rng.integers(-size // 8, size // 8 + 1, 2))
    cv2.circle(img, (c + dx, c + dy), int(rng.integers(size // 10, size // 6)), (110, 60, 140), -1, cv2.LINE_AA)
    return img


def write_images(folder, images: dict[str, np.ndarray]) -> list[str]:
    paths = []
    for name, img in images.items():
        paths.append(str(folder / name))
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if name.endswith(".jpg") else []
        assert cv2.imwrite(paths[-1], img, params)
    return paths


# ----------------------------------------------------------------------------- hashes


def test_perceptual_hash_is_stable_under_reencoding_and_resizing():
    img = cell_image(1)
    h = perceptual_hash(img)
    assert re.fullmatch(r"[0-9a-f]{16}", h)  # 64 bits as 16 lower-case hex digits
    assert perceptual_hash(img) == h
    jpeg = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_COLOR)
    assert hamming(perceptual_hash(jpeg), h) <= 4
    assert hamming(perceptual_hash(cv2.resize(img, (150, 150))), h) <= 4
    others = [hamming(perceptual_hash(cell_image(s)), h) for s in range(2, 12)]
    assert min(others) > 4
    assert perceptual_hash(img[:, :, 0]) == perceptual_hash(np.dstack([img[:, :, 0]] * 3))  # grayscale input


def test_groups_join_exact_and_near_duplicates_and_ignore_row_order():
    # pixel_threshold=None: hashes alone (the paths are made up, no file is read)
    df = synthetic_manifest({"a": 5, "b": 5})
    df.loc[3, "sha256"] = df.loc[0, "sha256"]  # byte-identical copy
    near = int(df.loc[1, "phash"], 16) ^ 0b101  # 2 bits away: a re-encoded copy
    df.loc[7, "phash"] = f"{near:016x}"
    groups = duplicate_groups(df, pixel_threshold=None)
    assert groups[0] == groups[3] and groups[1] == groups[7]
    assert groups.nunique() == len(df) - 2
    assert duplicate_groups(df, phash_threshold=None)[1] != duplicate_groups(df, phash_threshold=None)[7]
    shuffled = df.sample(frac=1, random_state=3)
    assert (duplicate_groups(shuffled, pixel_threshold=None).sort_index() == groups).all()


def test_reencoded_and_resized_copies_are_confirmed_near_duplicates(tmp_path):
    img = cell_image(1)
    small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    paths = write_images(
        tmp_path,
        {
            "a.png": img,
            "a_q70.jpg": cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_COLOR),
            "a_150.png": cv2.resize(img, (150, 150)),
            "a_64_q50.jpg": cv2.imdecode(
                cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 50])[1], cv2.IMREAD_COLOR
            ),
            "b.png": cell_image(2),
        },
    )
    df = pd.DataFrame({"path": paths, "label": ["x", "x", "x", "x", "x"]})
    groups = duplicate_groups(df)
    assert groups[:4].nunique() == 1 and groups[4] != groups[0]
    assert pixel_distance(img, img) == 0.0
    assert pixel_distance(img, cv2.resize(img, (150, 150))) < PIXEL_THRESHOLD


def test_look_alike_cells_with_colliding_hashes_are_not_grouped(tmp_path):
    """Different pictures whose hashes collide (a smooth background, one centred cell: the demo
    data's case) are candidates only; the pixel check keeps them apart, even along a chain."""
    images = {f"cell_{s}.png": look_alike_cell(s) for s in range(6)}
    paths = write_images(tmp_path, images)
    base = int(perceptual_hash(images["cell_0.png"]), 16)
    # a chain of candidates: each hash 2 bits from the next, so all within reach of union-find
    chain = [f"{base ^ ((1 << (2 * k)) - 1):016x}" for k in range(6)]
    df = pd.DataFrame(
        {
            "path": paths,
            "label": ["lymphocyte", "monocyte"] * 3,
            "sha256": [f"{i:064x}" for i in range(6)],
            "phash": chain,
        }
    )
    assert len(list(near_duplicate_pairs(chain, PHASH_THRESHOLD))) >= 5
    assert duplicate_groups(df, pixel_threshold=None).nunique() == 1  # hashes alone: one chained group
    assert duplicate_groups(df).nunique() == 6
    for a, b in zip(paths, paths[1:]):
        assert pixel_distance(cv2.imread(a), cv2.imread(b)) >= PIXEL_THRESHOLD
    splits = split_manifest(df, (0.5, 0.25, 0.25), seed=0)
    assert splits.dropped.empty and not (audit_splits(splits)["kind"] == "cross_label").any()


def test_unreadable_candidate_is_a_user_error(tmp_path):
    df = pd.DataFrame(
        {
            "path": [str(tmp_path / "gone_1.png"), str(tmp_path / "gone_2.png")],
            "label": "x",
            "sha256": ["1", "2"],
            "phash": ["00000000000000ff", "00000000000000fe"],
        }
    )
    with pytest.raises(WbcError, match="gone_1.png"):
        duplicate_groups(df)


def test_original_and_segmented_versions_of_one_picture_share_a_group():
    df = pd.DataFrame(
        {
            "path": ["/all/Original/Pro/x.jpg", "/all/Segmented/Pro/x.jpg", "/all/Original/Pro/y.jpg"],
            "source": "ALL",
            "source_label": "Pro",
            "label": "Pro",
            "version": ["Original", "Segmented", "Original"],
            "sha256": ["1", "2", "3"],
            "phash": random_hashes(3),
        }
    )
    groups = duplicate_groups(df)
    assert groups[0] == groups[1] != groups[2]


def test_hashes_are_computed_from_the_files_when_missing(tmp_path):
    paths = []
    for i, seed in enumerate([1, 1, 2]):  # the first two files are identical
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), cell_image(seed))
    df = pd.DataFrame({"path": [str(p) for p in paths], "label": ["x", "y", "x"]})
    groups = duplicate_groups(df)
    assert groups[0] == groups[1] != groups[2]


def test_all_digit_hashes_parsed_as_numbers_by_pandas_still_work():
    df = pd.DataFrame(
        {"path": ["a", "b"], "label": "x", "sha256": ["1", "2"], "phash": [34567890123456, 34567890123457]}
    )  # "0034567890123456" read as an int
    assert content_hashes(df)["phash"].tolist() == ["0034567890123456", "0034567890123457"]
    assert duplicate_groups(df, pixel_threshold=None).nunique() == 1  # 1 bit apart: near-duplicate candidates


# ----------------------------------------------------------------------------- split_manifest


def test_split_is_stratified_complete_and_disjoint():
    df = synthetic_manifest({"a": 100, "b": 50, "c": 25})
    splits = split_manifest(df, (0.8, 0.12, 0.08), seed=1)
    assert sum(len(splits[s]) for s in SPLITS) == len(df)
    assert set.intersection(*(set(splits[s]["path"]) for s in SPLITS)) == set()
    for label, n in {"a": 100, "b": 50, "c": 25}.items():
        counts = [int((splits[s]["label"] == label).sum()) for s in SPLITS]
        assert all(c >= 1 for c in counts)
        for count, frac in zip(counts, (0.8, 0.12, 0.08)):
            assert abs(count - frac * n) <= 1
    assert {"group", "sha256", "phash"} <= set(splits["train"].columns)


def test_duplicate_groups_never_span_splits():
    df = synthetic_manifest({"a": 60, "b": 60})
    for k in range(0, 60, 3):  # many groups of three byte-identical copies
        df.loc[k + 1, "sha256"] = df.loc[k, "sha256"]
        df.loc[k + 2, "sha256"] = df.loc[k, "sha256"]
    splits = split_manifest(df, (0.7, 0.15, 0.15), seed=0)
    where = {path: s for s in SPLITS for path in splits[s]["path"]}
    for k in range(0, 60, 3):
        assert where[df.at[k, "path"]] == where[df.at[k + 1, "path"]] == where[df.at[k + 2, "path"]]
    assert not (audit_splits(splits)["kind"] == "across_splits").any()
    assert (audit_splits(splits)["kind"] == "duplicate").sum() == 20


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    df = synthetic_manifest({"a": 40, "b": 40})
    one, two = split_manifest(df, seed=7), split_manifest(df.sample(frac=1, random_state=1), seed=7)
    for s in SPLITS:
        pd.testing.assert_frame_equal(one[s], two[s][one[s].columns])
    other = split_manifest(df, seed=8)
    assert set(other["test"]["path"]) != set(one["test"]["path"])


@pytest.mark.parametrize("policy", ["drop_both", "keep_one", "report"])
def test_cross_label_policies(policy):
    df = synthetic_manifest({"eosinophil": 20, "neutrophil": 20})
    eo, ne = 3, 25  # the same image filed under two labels
    df.loc[ne, "sha256"] = df.loc[eo, "sha256"]
    splits = split_manifest(df, seed=0, cross_label=policy)
    kept = pd.concat([splits[s] for s in SPLITS])
    audit = audit_splits(splits)
    row = audit[audit["kind"] == "cross_label"].iloc[0]
    assert row["labels"] == "eosinophil;neutrophil" and row["n"] == 2
    if policy == "drop_both":
        assert not kept["path"].isin([df.at[eo, "path"], df.at[ne, "path"]]).any()
        assert sorted(splits.dropped["path"]) == sorted([df.at[eo, "path"], df.at[ne, "path"]])
        assert row["action"].startswith("dropped all 2")
    elif policy == "keep_one":  # the first path in sorted order wins: /data/eosinophil/...
        assert kept["path"].isin([df.at[eo, "path"]]).any() and not kept["path"].isin([df.at[ne, "path"]]).any()
        assert "kept eosinophil" in row["action"]
    else:
        assert kept["path"].isin([df.at[eo, "path"], df.at[ne, "path"]]).sum() == 2
        assert row["action"].startswith("reported only; kept together")
        assert splits.dropped.empty


def test_class_with_too_few_groups_is_reported_missing():
    df = synthetic_manifest({"a": 30, "rare": 2})
    audit = audit_splits(split_manifest(df, seed=0))
    missing = audit[audit["kind"] == "class_missing"]
    assert missing["labels"].tolist() == ["rare"] and missing["splits"].tolist() == ["test"]


def test_audit_reports_hand_made_leaky_splits():
    df = synthetic_manifest({"a": 6})
    df.loc[5, "sha256"] = df.loc[0, "sha256"]
    leaky = {"train": df.iloc[:4], "val": df.iloc[4:], "test": df.iloc[0:0]}
    audit = audit_splits(leaky)
    leak = audit[audit["kind"] == "across_splits"]
    assert len(leak) == 1 and leak.iloc[0]["splits"] == "train;val"


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_user_errors(fractions):
    with pytest.raises(WbcError, match="fractions"):
        split_manifest(synthetic_manifest({"a": 5}), fractions)


def test_bad_policy_and_empty_manifest_are_user_errors():
    with pytest.raises(WbcError, match="policy"):
        split_manifest(synthetic_manifest({"a": 5}), cross_label="guess")
    with pytest.raises(WbcError, match="empty"):
        split_manifest(synthetic_manifest({"a": 5}).iloc[0:0])


# ----------------------------------------------------------------------------- CLI


def test_cli_split_writes_byte_identical_files_for_the_same_seed(tmp_path, capsys):
    csv = tmp_path / "manifest.csv"
    df = synthetic_manifest({"b": 30, "a": 20})
    df["sub_label"] = ""
    df.to_csv(csv, index=False)
    outputs = []
    for name in ("one", "two"):
        assert (
            cli_main(
                ["split", str(csv), "--out", str(tmp_path / name), "--fractions", "0.7", "0.15", "0.15", "--seed", "3"]
            )
            == 0
        )
        outputs.append(
            {
                f: (tmp_path / name / f).read_bytes()
                for f in ("train.csv", "val.csv", "test.csv", "audit.csv", "classes.txt")
            }
        )
    assert outputs[0] == outputs[1]
    assert outputs[0]["classes.txt"] == b"a\nb\n"
    printed = capsys.readouterr().out
    assert "train" in printed and "total" in printed
    train = pd.read_csv(tmp_path / "one" / "train.csv", keep_default_na=False)
    assert {"path", "label", "group", "sub_label"} <= set(train.columns)
    assert cli_main(["split", str(csv), "--out", str(tmp_path / "x"), "--fractions", "0.5", "0.5", "0.5"]) == 2


# ----------------------------------------------------------------------------- real sample


@pytest.fixture(scope="module")
def real_processed(real_sample, tmp_path_factory):
    """The real sample's PBC eosinophil/neutrophil folders and ALL Pro folder, preprocessed."""
    from wbc.preprocess import preprocess_manifest
    from wbc.readers import read_all, read_pbc

    pbc, _ = read_pbc(real_sample / "PBC_dataset_normal_DIB")
    all_, _ = read_all(real_sample / "ALL_Kaggle", version="both")
    manifest = pd.concat(
        [pbc[pbc["source_label"].isin(["eosinophil", "neutrophil"])], all_[all_["source_label"] == "Pro"]],
        ignore_index=True,
    )
    processed, quarantine = preprocess_manifest(
        manifest, tmp_path_factory.mktemp("real-pp"), 64, jobs=2, progress=False
    )
    assert quarantine.empty, quarantine.to_string()  # no black band, no unreadable file
    return processed


def test_real_sample_duplicates_are_kept_together_or_dropped_per_policy(real_processed):
    def where(splits, fragment):
        return sorted({s for s in SPLITS for p in splits[s]["raw_path"] if fragment in p})

    splits = split_manifest(real_processed, (0.7, 0.15, 0.15), seed=0)
    audit = audit_splits(splits)
    assert where(splits, "EO_225902") == [] and where(splits, "BNE_191112") == []  # drop_both
    cross = audit[audit["kind"] == "cross_label"]
    assert len(cross) == 1 and "EO_225902" in cross.iloc[0]["paths"] and "BNE_191112" in cross.iloc[0]["paths"]

    pro = [
        where(splits, f"{version}/Pro/WBC-Malignant-Pro-{n}.jpg")
        for version in ("Original", "Segmented")
        for n in (142, 143)
    ]
    assert len(pro[0]) == 1 and all(p == pro[0] for p in pro)  # 4 files (2 copies x 2 versions), one split
    pro_rows = audit[audit["paths"].str.contains("Pro-142")]
    assert len(pro_rows) == 1 and pro_rows.iloc[0]["kind"] == "duplicate" and pro_rows.iloc[0]["n"] == 4
    assert not (audit["kind"] == "across_splits").any()

    reported = split_manifest(real_processed, (0.7, 0.15, 0.15), seed=0, cross_label="report")
    assert len(where(reported, "EO_225902")) == 1 and where(reported, "EO_225902") == where(reported, "BNE_191112")


# ----------------------------------------------------------------------------- demo data, end to end


def test_cli_preprocess_then_split_on_demo_data(demo_root, tmp_path, capsys):
    from wbc.readers import read_pbc

    manifest, _ = read_pbc(demo_root / "PBC_dataset_normal_DIB")
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    assert (
        cli_main(
            ["preprocess", str(csv), "--out", str(tmp_path / "pp"), "--size", "32", "--jobs", "2", "--no-progress"]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "split",
                str(tmp_path / "pp" / "manifest.csv"),
                "--out",
                str(tmp_path / "splits"),
                "--fractions",
                "0.7",
                "0.15",
                "0.15",
            ]
        )
        == 0
    )
    parts = {s: pd.read_csv(tmp_path / "splits" / f"{s}.csv") for s in SPLITS}
    quarantined = len(pd.read_csv(tmp_path / "pp" / "quarantine.csv"))
    audit = pd.read_csv(tmp_path / "splits" / "audit.csv")
    dropped = int(audit.loc[audit["kind"] == "cross_label", "n"].sum()) if len(audit) else 0
    assert sum(len(p) for p in parts.values()) + quarantined + dropped == len(manifest)
    classes = (tmp_path / "splits" / "classes.txt").read_text().split()
    assert classes == sorted(set().union(*(set(p["label"]) for p in parts.values())))
    assert not (audit["kind"] == "across_splits").any()
    assert "total" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("per_class", [12, 40])  # the ci and demo profiles' demo data
def test_demo_data_has_only_the_planted_duplicate_groups(tmp_path, per_class):
    """The demo cells share smooth backgrounds and centred cells, so many different pairs have
    hashes within 4 bits; only the planted copies may be grouped: the cross-class PBC pair
    and the ALL Pro pair. ALL as the course uses it (``all4``: Original only)."""
    from wbc.demo import generate_demo
    from wbc.readers import read_all, read_lmu, read_pbc

    written = generate_demo(tmp_path, per_class=per_class, seed=0)
    manifest = pd.concat(
        [
            read_pbc(tmp_path / "PBC_dataset_normal_DIB")[0],
            read_lmu(tmp_path / "AML-Cytomorphology_LMU")[0],
            read_all(tmp_path / "ALL_Kaggle", version="Original")[0],
        ],
        ignore_index=True,
    )
    hashed = content_hashes(manifest)
    candidates = [
        (i, j)
        for i, j in near_duplicate_pairs(hashed["phash"].tolist())
        if hashed.at[i, "sha256"] != hashed.at[j, "sha256"]
    ]
    assert candidates  # different pictures with colliding hashes: the pixel check has work to do
    groups = duplicate_groups(hashed)
    found = {frozenset(g["path"]) for _, g in hashed.groupby(groups) if len(g) > 1}
    planted = written[
        written["quirk"].isin(["duplicate_across_classes", "duplicate_pair"])
        & ~written["path"].str.contains("/Segmented/")
    ]
    assert found == {frozenset(g["path"]) for _, g in planted.groupby("quirk")}


def test_real_sample_copies_are_confirmed_and_different_images_are_not(real_sample):
    """Thresholds measured on the real sample: each image's re-encoded and resized copies
    (when their hash stays within the threshold) are confirmed, and no two different images
    are, even among pairs whose hashes lie up to 10 bits apart."""
    from wbc.preprocess import read_image
    from wbc.split import thumbnail, thumbnail_distance

    paths = sorted(
        p for p in real_sample.rglob("*") if p.suffix.lower() in (".jpg", ".tiff") and not p.name.startswith(".")
    )
    images = [read_image(p) for p in paths]
    hashes = [perceptual_hash(img) for img in images]
    thumbs = [thumbnail(img) for img in images]
    different = [
        thumbnail_distance(thumbs[i], thumbs[j])
        for i, j in near_duplicate_pairs(hashes, 10)
        if not np.array_equal(images[i], images[j])
    ]  # byte-identical pairs aside
    assert len(different) > 5 and min(different) >= PIXEL_THRESHOLD

    def jpeg(img, side, quality):
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        return cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_UNCHANGED)

    candidates = confirmed = 0
    for k in range(0, len(images), 3):
        img = images[k]
        for copy in (jpeg(img, 128, 75), jpeg(img, 64, 50), cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2))):
            if hamming(perceptual_hash(copy), hashes[k]) <= PHASH_THRESHOLD:
                candidates += 1
                confirmed += thumbnail_distance(thumbs[k], thumbnail(copy)) < PIXEL_THRESHOLD
    assert candidates > 900 and confirmed == candidates
