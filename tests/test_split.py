"""Duplicate-aware stratified splits and the leakage audit."""
from __future__ import annotations


import cv2
import numpy as np
import pandas as pd
import pytest

from wbc.cli import main as cli_main
from wbc.errors import WbcError
from wbc.split import (SPLITS, audit_splits, duplicate_groups, hamming, perceptual_hash,
                       split_manifest)


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
    return pd.DataFrame({
        "path": [f"/data/{label}/img_{i:04d}.jpg" for i, label in enumerate(labels)],
        "source": "PBC", "label": labels,
        "sha256": [f"{i:064x}" for i in range(len(labels))], "phash": hashes,
    })


def cell_image(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 225, np.uint8)
    for _ in range(4):
        cv2.circle(img, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(8, 30)),
                   tuple(int(v) for v in rng.integers(40, 200, 3)), -1)
    return img


# ----------------------------------------------------------------------------- hashes

def test_perceptual_hash_is_stable_under_reencoding_and_resizing():
    img = cell_image(1)
    h = perceptual_hash(img)
    assert len(h) == 16 and int(h, 16) >= 0
    assert perceptual_hash(img) == h
    jpeg = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], cv2.IMREAD_COLOR)
    assert hamming(perceptual_hash(jpeg), h) <= 4
    assert hamming(perceptual_hash(cv2.resize(img, (150, 150))), h) <= 4
    others = [hamming(perceptual_hash(cell_image(s)), h) for s in range(2, 12)]
    assert min(others) > 4
    assert perceptual_hash(img[:, :, 0]) == perceptual_hash(np.dstack([img[:, :, 0]] * 3))  # grayscale input


def test_groups_join_exact_and_near_duplicates_and_ignore_row_order():
    df = synthetic_manifest({"a": 5, "b": 5})
    df.loc[3, "sha256"] = df.loc[0, "sha256"]  # byte-identical copy
    near = int(df.loc[1, "phash"], 16) ^ 0b101  # 2 bits away: a re-encoded copy
    df.loc[7, "phash"] = f"{near:016x}"
    groups = duplicate_groups(df)
    assert groups[0] == groups[3] and groups[1] == groups[7]
    assert groups.nunique() == len(df) - 2
    assert duplicate_groups(df, phash_threshold=None)[1] != duplicate_groups(df, phash_threshold=None)[7]
    shuffled = df.sample(frac=1, random_state=3)
    assert (duplicate_groups(shuffled).sort_index() == groups).all()


def test_original_and_segmented_versions_of_one_picture_share_a_group():
    df = pd.DataFrame({
        "path": ["/all/Original/Pro/x.jpg", "/all/Segmented/Pro/x.jpg", "/all/Original/Pro/y.jpg"],
        "source": "ALL", "source_label": "Pro", "label": "Pro", "version": ["Original", "Segmented", "Original"],
        "sha256": ["1", "2", "3"], "phash": random_hashes(3),
    })
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
    from wbc.split import content_hashes

    df = pd.DataFrame({"path": ["a", "b"], "label": "x", "sha256": ["1", "2"],
                       "phash": [34567890123456, 34567890123457]})  # "0034567890123456" read as an int
    assert content_hashes(df)["phash"].tolist() == ["0034567890123456", "0034567890123457"]
    assert duplicate_groups(df).nunique() == 1  # 1 bit apart: near duplicates


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
        assert cli_main(["split", str(csv), "--out", str(tmp_path / name), "--fractions", "0.7", "0.15", "0.15",
                         "--seed", "3"]) == 0
        outputs.append({f: (tmp_path / name / f).read_bytes()
                        for f in ("train.csv", "val.csv", "test.csv", "audit.csv", "classes.txt")})
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
    manifest = pd.concat([pbc[pbc["source_label"].isin(["eosinophil", "neutrophil"])],
                          all_[all_["source_label"] == "Pro"]], ignore_index=True)
    processed, quarantine = preprocess_manifest(manifest, tmp_path_factory.mktemp("real-pp"), 64,
                                                jobs=2, progress=False)
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

    pro = [where(splits, f"{version}/Pro/WBC-Malignant-Pro-{n}.jpg") for version in ("Original", "Segmented")
           for n in (142, 143)]
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
    assert cli_main(["preprocess", str(csv), "--out", str(tmp_path / "pp"), "--size", "32", "--jobs", "2",
                     "--no-progress"]) == 0
    assert cli_main(["split", str(tmp_path / "pp" / "manifest.csv"), "--out", str(tmp_path / "splits"),
                     "--fractions", "0.7", "0.15", "0.15"]) == 0
    parts = {s: pd.read_csv(tmp_path / "splits" / f"{s}.csv") for s in SPLITS}
    quarantined = len(pd.read_csv(tmp_path / "pp" / "quarantine.csv"))
    audit = pd.read_csv(tmp_path / "splits" / "audit.csv")
    dropped = int(audit.loc[audit["kind"] == "cross_label", "n"].sum()) if len(audit) else 0
    assert sum(len(p) for p in parts.values()) + quarantined + dropped == len(manifest)
    classes = (tmp_path / "splits" / "classes.txt").read_text().split()
    assert classes == sorted(set().union(*(set(p["label"]) for p in parts.values())))
    assert not (audit["kind"] == "across_splits").any()
    assert "total" in capsys.readouterr().out
