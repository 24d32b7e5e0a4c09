"""Grouping, hashing, the leakage audit and ``split_manifest`` of ``wbc.split``, called directly.

Small and fast on purpose (tiny synthetic PNGs in ``tmp_path``, or made-up paths where no file is
read), so that mutation testing (``.ci/mutate.py``) can run them for every mutant of the module.
Every expectation is worked out by hand from the rules in the docstrings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

import cv2
import numpy as np
import pandas as pd
import pytest

import wbc.split as wbc_split
from wbc.errors import WbcError
from wbc.split import (
    AUDIT_COLUMNS,
    SPLIT_FILES,
    SPLITS,
    ExternalSplit,
    Splits,
    audit_splits,
    build_external_split,
    check_labels,
    class_counts,
    confirmed_near_duplicate_pairs,
    content_hashes,
    duplicate_groups,
    near_duplicate_pairs,
    perceptual_hash,
    read_image,
    shared_classes,
    split_manifest,
    write_split_folder,
)

#: Six hashes pairwise at least 32 bits apart: never near-duplicate candidates of each other.
FAR = [
    "0000000000000000",
    "ffffffff00000000",
    "00000000ffffffff",
    "ffffffffffffffff",
    "0f0f0f0f0f0f0f0f",
    "f0f0f0f0f0f0f0f0",
]


def pattern(seed: int, size: int = 16) -> np.ndarray:
    """A blocky colour picture (4 x 4 random blocks): different seeds, different pictures."""
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(blocks, (size, size), interpolation=cv2.INTER_NEAREST)


def write_png(path, img: np.ndarray, compression: int = 3) -> str:
    """``img`` as a PNG; another ``compression`` gives other bytes for the same pixels."""
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    return str(path)


def sha256_of(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def groups_of(values, index=None) -> pd.Series:
    return pd.Series(values, index=index, name="group", dtype=int)


# ----------------------------------------------------------------------------- content_hashes


def test_content_hashes_fill_only_the_missing_values_and_leave_the_input_alone(tmp_path):
    a = write_png(tmp_path / "a.png", pattern(1))
    b = write_png(tmp_path / "b.png", pattern(2))
    c = write_png(tmp_path / "c.png", pattern(3))
    d = write_png(tmp_path / "d.png", pattern(4))
    df = pd.DataFrame(
        {
            "path": [a, b, c, d],
            "label": "x",
            "sha256": ["given-a", "", None, "   "],
            "phash": ["", "00000000000000ff", None, " "],
        },
        index=[10, 11, 12, 13],
    )
    before = df.copy()
    out = content_hashes(df)
    assert out.loc[10, "sha256"] == "given-a"  # present: kept, not recomputed
    assert out.loc[11, "phash"] == "00000000000000ff"
    for idx, path in zip(df.index, (a, b, c, d)):
        if idx != 10:
            assert out.loc[idx, "sha256"] == sha256_of(path)  # missing, empty or blank: computed
        if idx != 11:
            assert out.loc[idx, "phash"] == perceptual_hash(read_image(path))
    assert list(out.index) == [10, 11, 12, 13] and list(out.columns) == ["path", "label", "sha256", "phash"]
    pd.testing.assert_frame_equal(df, before)  # a copy was filled


def test_content_hashes_add_absent_columns_as_text(tmp_path):
    paths = [write_png(tmp_path / f"{i}.png", pattern(i)) for i in range(2)]
    out = content_hashes(pd.DataFrame({"path": paths, "label": ["x", "y"]}))
    assert out["sha256"].tolist() == [sha256_of(p) for p in paths]
    assert out["phash"].tolist() == [perceptual_hash(read_image(p)) for p in paths]
    assert out["sha256"].dtype == object and out["phash"].dtype == object


def test_content_hashes_read_nothing_when_complete():
    df = pd.DataFrame({"path": ["/nowhere/a.png"], "label": ["x"], "sha256": ["1"], "phash": [FAR[1]]})
    out = content_hashes(df)  # the file does not exist: reading it would fail
    pd.testing.assert_frame_equal(out, df)
    assert out is not df


def test_float_phashes_are_recomputed_from_the_images(tmp_path):
    """A phash column parsed as floats has lost digits: recomputed; the sha256 stays."""
    paths = [write_png(tmp_path / f"{i}.png", pattern(i)) for i in range(2)]
    df = pd.DataFrame({"path": paths, "label": "x", "sha256": ["s0", "s1"], "phash": [1.5e15, np.nan]})
    out = content_hashes(df)
    assert out["phash"].tolist() == [perceptual_hash(read_image(p)) for p in paths]
    assert out["sha256"].tolist() == ["s0", "s1"]


def test_integer_phashes_get_their_leading_zeros_back_without_reading():
    """An all-digit hash read as a number ("0000000000000255" as 255) is text again, 16 digits."""
    df = pd.DataFrame({"path": ["/nowhere/a", "/nowhere/b"], "label": "x", "sha256": ["1", "2"], "phash": [255, 1]})
    assert content_hashes(df)["phash"].tolist() == ["0000000000000255", "0000000000000001"]


def test_unreadable_file_is_named_with_the_reason(tmp_path):
    gone = str(tmp_path / "gone.png")
    df = pd.DataFrame({"path": [gone], "label": ["x"]})
    with pytest.raises(WbcError, match=re.escape(f"{gone}: cannot read (No such file or directory)")):
        content_hashes(df)


def test_hashing_progress_is_shown_only_when_asked(tmp_path, capsys, monkeypatch):
    from tqdm import tqdm

    # no monitor thread: a process forked later (mutation testing forks one per mutant) would
    # otherwise inherit a monitor that does not run there, and hang
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    df = pd.DataFrame({"path": [write_png(tmp_path / "a.png", pattern(1))], "label": ["x"]})
    content_hashes(df)
    assert capsys.readouterr().err == ""
    content_hashes(df, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)hashing: 100%", err) and re.search(r"1/1 \[.*[\d?]img/s\]", err)


# ----------------------------------------------------------------------------- near-duplicate pairs


def test_near_duplicate_pairs_include_the_threshold_distance():
    h = ["0000000000000000", "0000000000000007", "000000000000f000"]  # 0-1: 3 bits, 0-2: 4, 1-2: 7
    assert sorted(near_duplicate_pairs(h, 2)) == []
    assert sorted(near_duplicate_pairs(h, 3)) == [(0, 1)]
    assert sorted(near_duplicate_pairs(h, 4)) == [(0, 1), (0, 2)]
    assert sorted(near_duplicate_pairs(h)) == [(0, 1), (0, 2)]  # PHASH_THRESHOLD is 4
    assert sorted(near_duplicate_pairs(h, 7)) == [(0, 1), (0, 2), (1, 2)]
    assert list(near_duplicate_pairs([])) == [] and list(near_duplicate_pairs(h[:1], 64)) == []


def test_near_duplicate_pairs_are_found_across_and_within_blocks():
    """3,000 hashes are compared in blocks of 2,796 rows: planted pairs in the first block, in the
    second, and between them are all found, each once, with i < j."""
    rng = np.random.default_rng(0)
    values = [int(v) * 2 + 1 for v in rng.integers(0, 2**63, 3000, dtype=np.int64)]
    planted = [(0, 2999), (0, 1), (1000, 1500), (2795, 2796), (2900, 2950)]
    for i, j in planted:
        values[j] = values[i] ^ 0b1010  # two bits apart
    values[1] = values[0] ^ (1 << 63)  # one bit apart, the top one
    hashes = [f"{v:016x}" for v in values]
    found = list(near_duplicate_pairs(hashes))
    expected = {(0, 1), (0, 2999), (1, 2999), (1000, 1500), (2795, 2796), (2900, 2950)}  # 1-2999: 3 bits
    assert len(found) == len(set(found)) and set(found) == expected


def test_confirmed_pairs_read_each_candidate_once_and_compare_pixels_strictly(tmp_path, monkeypatch):
    paths = [
        write_png(tmp_path / "a.png", pattern(1), 0),
        write_png(tmp_path / "b.png", pattern(1), 9),  # the same picture, other bytes
        write_png(tmp_path / "c.png", pattern(2)),
        write_png(tmp_path / "d.png", pattern(3)),
    ]
    hashes = [FAR[0], FAR[0], FAR[0], FAR[3]]  # a, b and c collide; d is no candidate
    reads: list[str] = []

    def counting_read(path, **kwargs):
        reads.append(str(path))
        return read_image(path, **kwargs)

    monkeypatch.setattr(wbc_split, "read_image", counting_read)
    assert confirmed_near_duplicate_pairs(paths, hashes) == [(0, 1)]
    assert sorted(reads) == paths[:3]  # each candidate once, d never
    assert confirmed_near_duplicate_pairs(paths, hashes, pixel_threshold=None) == [(0, 1), (0, 2), (1, 2)]
    assert confirmed_near_duplicate_pairs(paths, hashes, pixel_threshold=100.0) == [(0, 1), (0, 2), (1, 2)]
    assert confirmed_near_duplicate_pairs(paths, hashes, pixel_threshold=0.0) == []  # distance 0 is not < 0
    assert confirmed_near_duplicate_pairs(paths, hashes, pixel_threshold=1e-9) == [(0, 1)]
    assert confirmed_near_duplicate_pairs(paths, [FAR[0], FAR[1], FAR[2], FAR[3]], 64, None) == [
        (i, j) for i in range(4) for j in range(i + 1, 4)
    ]


# ----------------------------------------------------------------------------- duplicate_groups


def test_group_ids_follow_the_sorted_first_paths_and_keep_the_index():
    df = pd.DataFrame(
        {
            "path": ["/d/c.png", "/d/a.png", "/d/b.png", "/d/0.png"],
            "label": "x",
            "sha256": ["s1", "s1", "s2", "s3"],  # c and a: byte-identical
            "phash": FAR[:4],
        },
        index=[7, 3, 5, 9],
    )
    pd.testing.assert_series_equal(duplicate_groups(df), groups_of([1, 1, 2, 0], [7, 3, 5, 9]))


def test_empty_manifest_gives_an_empty_group_series():
    empty = pd.DataFrame({"path": [], "label": []}, index=pd.Index([], dtype=int))
    pd.testing.assert_series_equal(duplicate_groups(empty), groups_of([], empty.index))


def test_exact_copies_only_read_no_file_and_need_no_phash():
    df = pd.DataFrame({"path": ["/nowhere/a", "/nowhere/b", "/nowhere/c"], "label": "x", "sha256": ["1", "2", "1"]})
    pd.testing.assert_series_equal(duplicate_groups(df, phash_threshold=None), groups_of([0, 1, 0]))
    df["phash"] = ["0000000000000000", "0000000000000001", "ffffffffffffffff"]  # a-b: candidates
    pd.testing.assert_series_equal(duplicate_groups(df, phash_threshold=None), groups_of([0, 1, 0]))
    pd.testing.assert_series_equal(duplicate_groups(df, pixel_threshold=None), groups_of([0, 0, 0]))


def test_phash_threshold_decides_which_hashes_are_linked():
    df = pd.DataFrame(
        {
            "path": ["/d/0", "/d/1", "/d/2", "/d/3"],
            "label": "x",
            "sha256": ["1", "2", "3", "4"],
            "phash": ["0000000000000000", "0000000000000007", "000000000000f000", FAR[3]],
        }
    )
    assert duplicate_groups(df, 2, pixel_threshold=None).tolist() == [0, 1, 2, 3]
    assert duplicate_groups(df, 3, pixel_threshold=None).tolist() == [0, 0, 1, 2]
    assert duplicate_groups(df, 4, pixel_threshold=None).tolist() == [0, 0, 0, 1]  # 1-2 linked through 0


def test_near_duplicates_are_confirmed_by_their_pixels(tmp_path):
    paths = [
        write_png(tmp_path / "a.png", pattern(1), 0),
        write_png(tmp_path / "b.png", pattern(1), 9),  # same pixels, other bytes
        write_png(tmp_path / "c.png", pattern(2)),
        write_png(tmp_path / "d.png", pattern(3)),
    ]
    assert sha256_of(paths[0]) != sha256_of(paths[1])
    df = pd.DataFrame({"path": paths, "label": "x"})
    pd.testing.assert_series_equal(duplicate_groups(df), groups_of([0, 0, 1, 2]))  # hashes computed
    hashed = content_hashes(df)
    hashed["phash"] = FAR[0]  # all four collide: only the pixels tell them apart
    pd.testing.assert_series_equal(duplicate_groups(hashed), groups_of([0, 0, 1, 2]))
    pd.testing.assert_series_equal(duplicate_groups(hashed, pixel_threshold=None), groups_of([0, 0, 0, 0]))
    pd.testing.assert_series_equal(duplicate_groups(hashed, pixel_threshold=0.0), groups_of([0, 1, 2, 3]))
    pd.testing.assert_series_equal(duplicate_groups(hashed, 0, pixel_threshold=1e-9), groups_of([0, 0, 1, 2]))
    no_sha = hashed.drop(columns="sha256")  # sha256 missing, phash present: computed as well
    pd.testing.assert_series_equal(duplicate_groups(no_sha, None), groups_of([0, 1, 2, 3]))


def test_versions_link_by_source_class_folder_and_raw_file_name():
    """Processed manifests: ``path`` is the output, ``raw_path`` the original, ``source_label``
    the class folder. Original and Segmented of one file link; another folder, another source
    or another file name does not, whatever the (mapped) label."""
    df = pd.DataFrame(
        {
            "path": [f"/pp/{i}.jpg" for i in range(6)],
            "raw_path": [
                "/all/Original/Pro/x.jpg",
                "/all/Segmented/Pro/x.jpg",
                "/all/Original/Benign/x.jpg",
                "/lmu/Pro/x.jpg",
                "/all/Segmented/Early/x.jpg",
                "/all/Original/Pro/y.jpg",
            ],
            "source": ["ALL", "ALL", "ALL", "LMU", "ALL", "ALL"],
            "source_label": ["Pro", "Pro", "Benign", "Pro", "Early", "Pro"],
            "label": ["Pro", "Pro", "Benign", "Pro", "Pro", "Pro"],
            "version": ["Original", "Segmented", "Original", "", "Segmented", "Original"],
            "sha256": [str(i) for i in range(6)],
            "phash": FAR,
        }
    )
    assert duplicate_groups(df).tolist() == [0, 0, 1, 2, 3, 4]


def test_versions_without_raw_path_source_or_source_label_use_path_and_label():
    df = pd.DataFrame(
        {
            "path": ["/all/Original/Pro/x.jpg", "/all/Segmented/Pro/x.jpg", "/all/Original/Pre/x.jpg"],
            "label": ["Pro", "Pro", "Pre"],
            "version": ["Original", "Segmented", "Original"],
            "sha256": ["1", "2", "3"],
            "phash": FAR[:3],
        }
    )
    assert duplicate_groups(df).tolist() == [1, 1, 0]  # ids by first path: .../Pre/x.jpg sorts first
    # without a version column a shared file name means nothing
    assert duplicate_groups(df.drop(columns="version")).tolist() == [1, 2, 0]


# ----------------------------------------------------------------------------- audit_splits


def _rows(label_path_group: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [p for _, p, _ in label_path_group],
            "raw_path": ["/raw" + p for _, p, _ in label_path_group],
            "label": [label for label, _, _ in label_path_group],
            "group": [g for _, _, g in label_path_group],
        }
    )


def hand_made_splits() -> Splits:
    """Every kind of finding, worked out by hand in ``test_audit_lists_every_finding``."""
    parts = {
        "train": _rows(
            [
                ("b", "/d/b/14.png", 11),
                ("a", "/d/a/14.png", 11),  # group 11: a and b kept in train, c dropped (rows not in id order)
                ("a", "/d/a/1.png", 0),
                ("a", "/d/a/2.png", 0),  # group 0: a duplicate kept together in train
                ("a", "/d/a/3.png", 1),  # group 1: also in val, a leak
                ("b", "/d/b/4.png", 2),
                ("b", "/d/b/5.png", 3),
                ("c", "/d/c/5.png", 3),  # group 3: two labels, reported and kept together
            ]
        ),
        "val": _rows([("a", "/d/a/3b.png", 1), ("a", "/d/a/7.png", 4), ("b", "/d/b/8.png", 5)]),
        "test": _rows([("a", "/d/a/9.png", 6), ("c", "/d/c/10.png", 7)]),
    }
    dropped = _rows(
        [
            ("c", "/d/c/8.png", 5),  # group 5: b kept in val, c dropped
            ("b", "/d/b/11.png", 8),
            ("a", "/d/a/11.png", 8),  # group 8: two labels, both dropped
            ("a", "/d/a/12.png", 9),
            ("a", "/d/a/12b.png", 9),  # group 9: one label, both dropped
            ("d", "/d/d/13.png", 10),  # alone, and its class is in no split
            ("c", "/d/c/14.png", 11),
        ]
    ).assign(reason="why")
    return Splits(parts, dropped)


EXPECTED_AUDIT = [
    (
        "duplicate",
        0,
        "a",
        "train",
        2,
        "/raw/d/a/1.png;/raw/d/a/2.png",
        "kept together in train",
    ),
    (
        "across_splits",
        1,
        "a",
        "train;val",
        2,
        "/raw/d/a/3.png;/raw/d/a/3b.png",
        "none: this group leaks between splits",
    ),
    (
        "cross_label",
        3,
        "b;c",
        "train",
        2,
        "/raw/d/b/5.png;/raw/d/c/5.png",
        "reported only; kept together in train",
    ),
    ("cross_label", 5, "b;c", "val;dropped", 2, "/raw/d/b/8.png;/raw/d/c/8.png", "kept b in val; dropped 1"),
    (
        "cross_label",
        8,
        "a;b",
        "dropped",
        2,
        "/raw/d/a/11.png;/raw/d/b/11.png",
        "dropped all 2 copies (label ambiguous)",
    ),
    ("duplicate", 9, "a", "dropped", 2, "/raw/d/a/12.png;/raw/d/a/12b.png", "dropped all 2 copies"),
    (
        "cross_label",
        11,
        "a;b;c",
        "train;dropped",
        3,
        "/raw/d/a/14.png;/raw/d/b/14.png;/raw/d/c/14.png",
        "kept a, b in train; dropped 1",
    ),
    ("class_missing", -1, "c", "val", 0, "", "none: the class has only 2 group(s)"),
    ("class_missing", -1, "b", "test", 0, "", "none: the class has only 4 group(s)"),
]


def test_audit_lists_every_finding():
    expected = pd.DataFrame(EXPECTED_AUDIT, columns=list(AUDIT_COLUMNS))
    splits = hand_made_splits()
    pd.testing.assert_frame_equal(audit_splits(splits), expected)
    # ``dropped`` given explicitly, with the splits as a plain dict: the same
    pd.testing.assert_frame_equal(audit_splits(dict(splits), splits.dropped), expected)
    # without the dropped rows only the findings about kept rows remain (group 5: b alone in val)
    kept_only = expected[~expected["splits"].str.contains("dropped")].reset_index(drop=True)
    kept_only = pd.concat(
        [
            kept_only.iloc[:3],
            pd.DataFrame(
                [
                    (
                        "cross_label",
                        11,
                        "a;b",
                        "train",
                        2,
                        "/raw/d/a/14.png;/raw/d/b/14.png",
                        "reported only; kept together in train",
                    )
                ],
                columns=list(AUDIT_COLUMNS),
            ),
            kept_only.iloc[3:],
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(audit_splits(dict(splits)), kept_only)
    empty = splits.dropped.iloc[0:0]
    pd.testing.assert_frame_equal(audit_splits(splits, empty), kept_only)


def test_audit_shows_path_without_raw_path_and_skips_absent_splits():
    train = pd.DataFrame({"path": ["/b", "/a", "/c"], "label": ["x", "x", "y"], "group": [0, 0, 1]})
    audit = audit_splits({"train": train, "holdout": train})  # only the three split names count
    assert audit.to_dict("records") == [
        {
            "kind": "duplicate",
            "group": 0,
            "labels": "x",
            "splits": "train",
            "n": 2,
            "paths": "/a;/b",
            "action": "kept together in train",
        }
    ]


def test_audit_reports_a_missing_class_after_an_empty_split():
    train = pd.DataFrame({"path": ["/a1", "/b1"], "label": ["a", "b"], "group": [0, 1]})
    test = pd.DataFrame({"path": ["/a2"], "label": ["a"], "group": [2]})
    audit = audit_splits({"train": train, "val": train.iloc[0:0], "test": test})
    assert audit[["kind", "labels", "splits", "action"]].values.tolist() == [
        ["class_missing", "b", "test", "none: the class has only 1 group(s)"]
    ]


def test_audit_orders_group_ids_read_as_text_by_number():
    """Splits read from CSV as text: group "10" comes after group "9"."""
    train = pd.DataFrame({"path": ["/a", "/b", "/c", "/d"], "label": "x", "group": ["10", "10", "9", "9"]})
    audit = audit_splits({"train": train})
    assert audit["group"].tolist() == [9, 10] and audit["paths"].tolist() == ["/c;/d", "/a;/b"]


def test_audit_of_nothing_is_an_empty_table_with_the_columns():
    empty = pd.DataFrame({"path": [], "label": [], "group": []})
    for splits in ({}, {name: empty for name in SPLITS}, Splits({name: empty for name in SPLITS}, empty)):
        audit = audit_splits(splits)
        assert audit.empty and list(audit.columns) == list(AUDIT_COLUMNS)


def test_audit_computes_groups_when_some_are_missing():
    """Groups absent (or missing in one split): computed, with the given phash threshold (None:
    exact copies only; the hashes below are candidates whose made-up files cannot be read)."""
    train = pd.DataFrame(
        {"path": ["/nowhere/a", "/nowhere/b"], "label": "x", "sha256": ["1", "2"], "phash": FAR[:2], "group": [5, 6]}
    )
    val = pd.DataFrame(
        {"path": ["/nowhere/c", "/nowhere/d"], "label": "x", "sha256": ["1", "3"], "phash": [FAR[1], FAR[1][:-1] + "1"]}
    )
    for splits in ({"train": train, "val": val}, {"train": train.drop(columns="group"), "val": val}):
        audit = audit_splits(splits, phash_threshold=None)
        assert audit[["kind", "group", "splits", "paths"]].values.tolist() == [
            ["across_splits", 0, "train;val", "/nowhere/a;/nowhere/c"]
        ]


def test_audit_finds_a_near_duplicate_leak_with_the_default_threshold(tmp_path):
    same = [write_png(tmp_path / "a.png", pattern(1), 0), write_png(tmp_path / "b.png", pattern(1), 9)]
    splits = {
        "train": pd.DataFrame({"path": same[:1], "label": ["x"]}),
        "val": pd.DataFrame({"path": same[1:], "label": ["x"]}),
    }
    assert audit_splits(splits)["kind"].tolist() == ["across_splits"]
    assert audit_splits(splits, phash_threshold=None).empty


def test_audit_group_ids_given_as_floats_are_reported_as_integers():
    train = pd.DataFrame({"path": ["/a", "/b"], "label": "x", "group": [3.0, 3.0]})
    audit = audit_splits({"train": train})
    assert audit["group"].tolist() == [3] and isinstance(audit["group"].iloc[0], (int, np.integer))


# ----------------------------------------------------------------------------- split_manifest


def manifest_with_hashes(labels: list[str], copies: dict[int, int] | None = None) -> pd.DataFrame:
    """Made-up paths with far-apart hashes (nothing is read); ``copies``: row -> row it copies."""
    n = len(labels)
    rng = np.random.default_rng(n)
    phashes, sha = [], [f"{i:064x}" for i in range(n)]
    while len(phashes) < n:
        h = f"{int(rng.integers(0, 2**62)):016x}"
        if all(bin(int(h, 16) ^ int(o, 16)).count("1") > 8 for o in phashes):
            phashes.append(h)
    for row, original in (copies or {}).items():
        sha[row] = sha[original]
    return pd.DataFrame(
        {
            "path": [f"/d/{label}/{i:03d}.png" for i, label in enumerate(labels)],
            "label": labels,
            "sha256": sha,
            "phash": phashes,
        }
    )


def test_split_rows_are_sorted_by_label_and_path_with_a_fresh_index():
    df = manifest_with_hashes(["b", "a"] * 20)
    shuffled = df.sample(frac=1, random_state=2)
    shuffled.index = shuffled.index + 100
    splits = split_manifest(shuffled, (0.5, 0.25, 0.25), seed=3)
    for name in SPLITS:
        part = splits[name]
        assert list(part.index) == list(range(len(part)))
        assert part[["label", "path"]].values.tolist() == sorted(part[["label", "path"]].values.tolist())
        assert list(part.columns) == ["path", "label", "sha256", "phash", "group"]
    assert sorted(sum((splits[n]["path"].tolist() for n in SPLITS), [])) == sorted(df["path"])
    assert [len(splits[n]) for n in SPLITS] == [20, 10, 10]


def test_split_defaults_are_study_a_fractions_seed_0_and_drop_both():
    df = manifest_with_hashes(["a"] * 50 + ["b"] * 50, copies={60: 3})  # row 60 (b) copies row 3 (a)
    default = split_manifest(df)
    explicit = split_manifest(df, (0.8, 0.12, 0.08), 0, cross_label="drop_both")
    for name in SPLITS:
        pd.testing.assert_frame_equal(default[name], explicit[name])
    assert [len(default[n]) for n in SPLITS] == [78, 12, 8]  # 49 per class: 39 + 6 + 4
    pd.testing.assert_frame_equal(default.dropped, explicit.dropped)
    assert default.dropped["path"].tolist() == ["/d/a/003.png", "/d/b/060.png"]
    assert list(default.dropped.index) == [0, 1]
    assert list(default.dropped.columns) == ["path", "label", "sha256", "phash", "group", "reason"]
    assert set(default.dropped["reason"]) == {"same image under several labels (a, b): drop_both"}
    other_seed = split_manifest(df, seed=1)
    assert set(other_seed["test"]["path"]) != set(default["test"]["path"])


def test_split_phash_threshold_decides_near_duplicate_groups(tmp_path):
    same = [write_png(tmp_path / "a.png", pattern(1), 0), write_png(tmp_path / "b.png", pattern(1), 9)]
    others = [write_png(tmp_path / f"x{i}.png", pattern(10 + i)) for i in range(6)]
    df = pd.DataFrame({"path": same + others, "label": "x"})
    grouped = split_manifest(df, (0.5, 0.25, 0.25))
    together = pd.concat([grouped[n] for n in SPLITS]).set_index("path")["group"]
    assert together[same[0]] == together[same[1]] and together[others].nunique() == 6
    exact_only = pd.concat([split_manifest(df, (0.5, 0.25, 0.25), phash_threshold=None)[n] for n in SPLITS])
    assert exact_only["group"].nunique() == 8


def test_split_keeps_one_label_when_asked():
    df = manifest_with_hashes(["a"] * 6 + ["b"] * 6, copies={7: 2})
    splits = split_manifest(df, (0.5, 0.25, 0.25), cross_label="keep_one")
    kept = pd.concat([splits[n] for n in SPLITS])
    assert "/d/a/002.png" in set(kept["path"]) and "/d/b/007.png" not in set(kept["path"])
    assert splits.dropped["path"].tolist() == ["/d/b/007.png"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop(columns="label"), "manifest lacks column(s) label"),
        (lambda df: df.drop(columns=["path", "label"]), "manifest lacks column(s) path, label"),
        (lambda df: df.iloc[0:0], "^manifest is empty: nothing to split$"),
        (lambda df: df.assign(label=["a", " ", "b", "a"]), "1 row(s) have an empty or unusable label"),
    ],
)
def test_split_refuses_unusable_manifests_with_a_clear_message(change, message):
    with pytest.raises(WbcError, match=message if message.startswith("^") else re.escape(message)):
        split_manifest(change(manifest_with_hashes(["a", "b", "a", "b"])), (0.5, 0.25, 0.25))


def test_split_deals_largest_groups_first_and_ties_to_the_earlier_split():
    # sizes 4, 1, 1, 1, 1 at 50/25/25: the 4 fills train, the singles go two to val, two to test
    # (smallest first would put two singles in train before the 4: 6 / 1 / 1)
    splits = split_manifest(manifest_with_hashes(["a"] * 8, copies={1: 0, 2: 0, 3: 0}), (0.5, 0.25, 0.25))
    assert [len(splits[n]) for n in SPLITS] == [4, 2, 2] and splits["train"]["group"].nunique() == 1
    # sizes 2, 1: the 1 is as far below target in val as in test: val, the earlier, gets it
    splits = split_manifest(manifest_with_hashes(["a"] * 3, copies={1: 0}), (0.5, 0.25, 0.25))
    assert [len(splits[n]) for n in SPLITS] == [2, 1, 0]


def test_split_with_a_zero_fraction_leaves_that_split_empty():
    splits = split_manifest(manifest_with_hashes(["a"] * 4 + ["b"] * 4), (0.5, 0.5, 0.0))
    assert [len(splits[n]) for n in SPLITS] == [4, 4, 0]


def test_split_refuses_an_unknown_policy_and_lists_the_choices():
    with pytest.raises(
        WbcError, match=re.escape("unknown cross-label policy 'both': choose one of drop_both, keep_one, report")
    ):
        split_manifest(manifest_with_hashes(["a", "b"]), cross_label="both")


# ----------------------------------------------------------------------------- class_counts


def test_class_counts_per_split_with_totals():
    splits = {
        "train": pd.DataFrame({"label": ["a", "a", "b"]}),
        "val": pd.DataFrame({"label": ["b"]}),
        "test": pd.DataFrame({"label": pd.Series([], dtype=object)}),
    }
    table = class_counts(splits)
    assert list(table.columns) == ["train", "val", "test", "total"]
    assert table.loc[["a", "b", "total"]].values.tolist() == [[2, 0, 0, 2], [1, 1, 0, 2], [3, 1, 0, 4]]
    assert list(class_counts({"val": splits["val"], "train": splits["train"]}).columns) == ["train", "val", "total"]


# ----------------------------------------------------------------------------- check_labels, shared_classes


def test_label_check_lists_ten_rows_and_counts_the_rest():
    labels = ["ok", "", " ", "a\nb", "c\rd", np.nan] + [""] * 7  # rows 1-12 unusable
    df = pd.DataFrame({"path": [f"/p/{i}" for i in range(13)], "label": labels})
    with pytest.raises(WbcError) as exc:
        check_labels(df)
    shown = "\n  ".join(f"row {i}: /p/{i} (label {labels[i]!r})" for i in range(1, 11))
    assert str(exc.value) == (
        "12 row(s) have an empty or unusable label (a class needs a non-blank name on one line):\n  "
        + shown
        + "\n  ... and 2 more\nGive those images a class or remove the rows, then split again."
    )
    with pytest.raises(WbcError) as exc:  # ten rows, no path column: all shown, "?" for the path
        check_labels(df.drop(columns="path").iloc[:11])
    assert str(exc.value).endswith(
        "\n  row 10: ? (label '')\nGive those images a class or remove the rows, then split again."
    )
    check_labels(df.iloc[:1])  # "ok" is a usable label


def test_shared_classes_names_the_missing_sources():
    pbc = pd.DataFrame({"label": ["a", "b"], "source": "PBC"})
    with pytest.raises(WbcError) as exc:
        shared_classes(pbc)
    assert str(exc.value) == (
        "the manifest has no LMU images: external validation needs both PBC and LMU (found sources: ['PBC'])"
    )
    with pytest.raises(WbcError, match=re.escape("has no PBC, LMU images: external validation needs both PBC and LMU")):
        shared_classes(pbc.assign(source="ALL"))


# ----------------------------------------------------------------------------- write_split_folder


def test_split_folder_holds_the_splits_the_audit_and_the_classes(tmp_path):
    splits = hand_made_splits()
    out = tmp_path / "split"
    audit = write_split_folder(splits, out)
    pd.testing.assert_frame_equal(audit, audit_splits(splits))
    assert sorted(p.name for p in out.iterdir()) == sorted(SPLIT_FILES)
    assert (out / "classes.txt").read_text() == "a\nb\nc\n"  # d: only among the dropped rows
    for name in SPLITS:
        written = pd.read_csv(out / f"{name}.csv", keep_default_na=False)
        pd.testing.assert_frame_equal(written, splits[name])
    written = pd.read_csv(out / "audit.csv", keep_default_na=False)
    assert written["paths"].tolist() == audit["paths"].tolist() and written["kind"].tolist() == audit["kind"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]  # no temporary folder or lock left


def test_split_folder_refuses_incomplete_or_empty_splits_and_a_file_in_the_way(tmp_path):
    splits = hand_made_splits()
    out = tmp_path / "split"
    with pytest.raises(WbcError) as exc:
        write_split_folder({"train": splits["train"], "val": splits["val"]}, out)
    assert str(exc.value) == "the splits lack 'test': expected train, val, test"
    empty = {name: splits[name].iloc[0:0] for name in SPLITS}
    with pytest.raises(WbcError) as exc:
        write_split_folder(empty, out)
    assert str(exc.value) == f"every split is empty: nothing to write to {out}"
    out.write_text("a file")
    with pytest.raises(WbcError) as exc:
        write_split_folder(splits, out)
    assert str(exc.value) == f"{out}: exists and is not a folder"
    with pytest.raises(WbcError, match="1 row\\(s\\) have an empty"):
        write_split_folder({**splits, "val": splits["val"].assign(label=["a", "", "b"])}, tmp_path / "other")


def test_split_folder_audit_uses_the_phash_threshold(tmp_path):
    same = [write_png(tmp_path / "a.png", pattern(1), 0), write_png(tmp_path / "b.png", pattern(1), 9)]
    splits = {
        "train": pd.DataFrame({"path": same[:1], "label": ["x"]}),
        "val": pd.DataFrame({"path": same[1:], "label": ["x"]}),
        "test": pd.DataFrame({"path": [], "label": []}),
    }
    assert write_split_folder(splits, tmp_path / "one")["kind"].tolist() == ["across_splits"]
    assert write_split_folder(splits, tmp_path / "two", phash_threshold=None).empty


def test_failed_replacement_gives_the_carried_files_back(tmp_path, monkeypatch):
    import wbc.fileio as fileio

    splits = hand_made_splits()
    out = tmp_path / "split"
    write_split_folder(splits, out)
    old = {name: (out / name).read_bytes() for name in SPLIT_FILES}
    (out / "notes.md").write_text("mine")
    os.symlink(tmp_path / "nowhere", out / "link")  # dangling: exists() is False, still carried

    def fail(new, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio, "replace_folder", fail)
    with pytest.raises(OSError, match="No space left"):
        write_split_folder({**splits, "test": splits["val"]}, out)
    assert {name: (out / name).read_bytes() for name in SPLIT_FILES} == old
    assert (out / "notes.md").read_text() == "mine" and os.readlink(out / "link") == str(tmp_path / "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]


# ----------------------------------------------------------------------------- external validation


@pytest.fixture
def split_log():
    """The messages logged by wbc.split (the "wbc" logger does not propagate to caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("wbc.split")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def two_source_manifest() -> pd.DataFrame:
    """PBC: a x 10, b x 10, c x 4; LMU: a x 2, b x 3, d x 2 (made-up paths, far-apart hashes)."""
    rows = [("PBC", "a")] * 10 + [("PBC", "b")] * 10 + [("PBC", "c")] * 4
    rows += [("LMU", "a")] * 2 + [("LMU", "b")] * 3 + [("LMU", "d")] * 2
    df = manifest_with_hashes([label for _, label in rows])
    df.insert(1, "source", [source for source, _ in rows])
    df["path"] = [f"/{source}{path}" for source, path in zip(df["source"], df["path"])]
    return df


def test_external_split_layout_contents_and_log(tmp_path, split_log):
    manifest = two_source_manifest()
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    out = tmp_path / "ext"
    ext = build_external_split(csv, out, fractions=(0.5, 0.25, 0.25), seed=3)  # a path is read
    assert ext == ExternalSplit(out / "internal", out / "external", ["a", "b"])
    pbc = manifest[(manifest["source"] == "PBC") & manifest["label"].isin(["a", "b"])].reset_index(drop=True)
    expected = split_manifest(pbc, (0.5, 0.25, 0.25), 3)
    for name in SPLITS:
        written = pd.read_csv(ext.internal / f"{name}.csv", keep_default_na=False)
        assert written["path"].tolist() == expected[name]["path"].tolist()
        assert list(written.columns) == list(expected[name].columns)
    external = pd.read_csv(ext.external / "test.csv", keep_default_na=False)
    lmu = manifest[(manifest["source"] == "LMU") & manifest["label"].isin(["a", "b"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(external, lmu)
    messages = [r.getMessage() for r in split_log]
    assert messages == [
        "Left out (not in both PBC and LMU with >= 2 images): c, d",
        f"External-validation splits written to {out}: train on PBC, test on LMU",
    ]


def test_external_split_defaults_are_all4_fractions_seed_0_and_two_images(tmp_path):
    manifest = two_source_manifest()
    default = build_external_split(manifest, tmp_path / "default")
    explicit = build_external_split(manifest, tmp_path / "explicit", fractions=(0.7, 0.15, 0.15), seed=0, min_images=2)
    assert default.classes == explicit.classes == ["a", "b"]  # a: exactly two LMU images
    for name in SPLITS:
        assert (default.internal / f"{name}.csv").read_bytes() == (explicit.internal / f"{name}.csv").read_bytes()


def test_external_split_is_reused_for_the_same_rows_and_rebuilt_when_asked(tmp_path, split_log):
    manifest = two_source_manifest()
    out = tmp_path / "ext"
    first = build_external_split(manifest, out, seed=1)
    del split_log[:]
    again = build_external_split(manifest.set_axis(range(100, 100 + len(manifest))), out, seed=1)  # other index
    assert again == first
    assert [r.getMessage() for r in split_log] == [
        f"External-validation splits: reusing {out} (same manifest and settings)"
    ]
    del split_log[:]
    build_external_split(manifest, out, seed=1, rebuild=True)
    assert split_log[-1].getMessage().startswith("External-validation splits written to")
    assert not any("reusing" in r.getMessage() or "changed" in r.getMessage() for r in split_log)


def test_external_split_counts_fill_absent_classes_with_zero(tmp_path):
    (tmp_path / "internal").mkdir()
    (tmp_path / "external").mkdir()
    for name, labels in {"train": "aab", "val": "a", "test": "b"}.items():
        pd.DataFrame({"label": list(labels)}).to_csv(tmp_path / "internal" / f"{name}.csv", index=False)
    pd.DataFrame({"label": list("abb")}).to_csv(tmp_path / "external" / "test.csv", index=False)
    table = ExternalSplit(tmp_path / "internal", tmp_path / "external", ["a", "b"]).counts()
    assert list(table.columns) == ["train", "val", "test", "external test"]
    assert list(table.index) == ["a", "b", "total"]
    assert table.values.tolist() == [[2, 1, 0, 1], [1, 0, 1, 2], [3, 1, 1, 3]]
    assert all(dtype == np.int64 for dtype in table.dtypes)
