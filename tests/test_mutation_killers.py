"""Behaviour that mutation testing (``make mutate``, .ci/mutate.py) found unchecked in the modules
whose mistakes would corrupt results silently: the label map and merge, metrics, the split, the
image checks of the preprocessing stage. Each test states what the library promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wbc import merge
from wbc.errors import LayoutError, WbcError
from wbc.labels import describe_source_label, load_label_map
from wbc.merge import build_all4, build_wbc10, table_one, wbc10_from_data_dir
from wbc.metrics import (
    classification_report_text,
    compute_metrics,
    confusion,
    cross_entropy,
    per_class_table,
)

MAP_HEADER = "class,source,source_label,sub_label,note\n"


def rows(source: str, folder: str, n: int, sub: str = "", start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/raw/{source}/{folder}/{sub or folder}_{i:05d}.img" for i in range(start, start + n)],
            "source": source,
            "source_label": folder,
            "sub_label": sub,
            "label": folder,
        }
    )


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "args, expected",
    [
        (("LMU", "LYA"), "LMU LYA (atypical lymphocyte)"),
        (("LMU", "XYZ"), "LMU XYZ"),
        (("PBC", "LYA"), "PBC LYA"),  # an LMU code under PBC is not an LMU class
        (("PBC", "ig", "IG"), "PBC ig/IG_ (immature granulocyte, not further specified)"),
        (("PBC", "neutrophil", "XYZ"), "PBC neutrophil/XYZ_"),
        (("PBC", "unknown_folder", "AB"), "PBC unknown_folder/AB_"),
        (("PBC", "erythroblast"), "PBC erythroblast"),
        (("ALL", "Benign", "X"), "ALL Benign"),
    ],
)
def test_describe_source_label_names_every_kind_of_source_class(args, expected):
    assert describe_source_label(*args) == expected


def test_load_label_map_keeps_every_field_as_text(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text(MAP_HEADER + "basophil,LMU,BAS,,12\neosinophil,PBC,eosinophil,EO,\n")
    table = load_label_map(path)
    assert table["note"].tolist() == ["12", ""]
    assert table["sub_label"].tolist() == ["", "EO"]
    assert all(isinstance(v, str) for column in table.columns for v in table[column])


def test_load_label_map_names_an_unreadable_file(tmp_path):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(WbcError, match="cannot read the label map") as exc:
        load_label_map(missing)
    assert str(missing) in str(exc.value)


def test_load_label_map_lists_both_rows_of_a_double_mapping_without_index(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text(MAP_HEADER + "monocyte,LMU,MON,,\nbasophil,LMU,BAS,,\neosinophil,LMU,BAS,,\n")
    with pytest.raises(WbcError, match="more than once") as exc:
        load_label_map(path)
    listed = str(exc.value).splitlines()[2:]
    assert [line.split()[0] for line in listed] == ["basophil", "eosinophil"]


# ----------------------------------------------------------------------------- merge


def test_build_wbc10_default_cap_is_1300_and_default_seed_is_0():
    pbc = rows("PBC", "basophil", 1301, "BA")
    manifest, excluded = build_wbc10(pbc, None)
    assert len(manifest) == 1300 and len(excluded) == 1
    assert "(cap 1300, seed 0)" in excluded["reason"].iloc[0]
    again, _ = build_wbc10(pbc, None, cap=1300, seed=0)
    pd.testing.assert_frame_equal(manifest, again)


def test_build_wbc10_uses_the_given_label_map(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text(MAP_HEADER + "basophil,LMU,BAS,,\n")
    lmu = pd.concat([rows("LMU", "BAS", 2), rows("LMU", "EOS", 3)], ignore_index=True)
    manifest, excluded = build_wbc10(None, lmu, label_map=load_label_map(path))
    assert manifest["label"].tolist() == ["basophil", "basophil"]
    assert sorted(excluded["reason"].unique()) == ["not one of the ten classes: LMU EOS (eosinophil)"]


def test_build_wbc10_blank_sub_labels_stay_blank_and_reasons_name_the_prefix(tmp_path):
    pbc = pd.concat([rows("PBC", "erythroblast", 2), rows("PBC", "ig", 2, "IG")], ignore_index=True)
    lmu = rows("LMU", "EOS", 2)
    pbc.to_csv(tmp_path / "pbc.csv", index=False)
    lmu.to_csv(tmp_path / "lmu.csv", index=False)
    pbc, lmu = pd.read_csv(tmp_path / "pbc.csv"), pd.read_csv(tmp_path / "lmu.csv")
    assert pbc["sub_label"].isna().sum() == 2 and lmu["sub_label"].isna().all()
    manifest, excluded = build_wbc10(pbc, lmu, cap=None)
    assert manifest["sub_label"].tolist() == ["", ""] and manifest["label"].tolist() == ["eosinophil"] * 2
    reasons = dict(zip(excluded["path"], excluded["reason"]))
    assert reasons["/raw/PBC/erythroblast/erythroblast_00000.img"] == "not one of the ten classes: PBC erythroblast"
    assert reasons["/raw/PBC/ig/IG_00001.img"] == (
        "not one of the ten classes: PBC ig/IG_ (immature granulocyte, not further specified)"
    )


def test_build_wbc10_refuses_no_input_with_its_message():
    with pytest.raises(WbcError) as exc:
        build_wbc10(None, None)
    assert str(exc.value) == "build_wbc10 needs at least one non-empty manifest (PBC and/or LMU)"


def test_build_all4_without_version_column_tags_rows_and_reindexes():
    manifest = pd.concat([rows("ALL", "Pro", 2, start=5), rows("ALL", "Benign", 2)], ignore_index=True)
    out, skipped = build_all4(manifest)
    assert out["version"].tolist() == ["Original"] * 4
    assert out["path"].is_monotonic_increasing and out.index.tolist() == [0, 1, 2, 3]
    assert list(skipped.columns) == ["path", "reason"] and skipped.empty
    with pytest.raises(WbcError) as exc:
        build_all4(manifest.assign(version="Original"), version="Segmented")
    assert str(exc.value) == "the ALL manifest has no Segmented images"


def test_table_one_fills_an_absent_source_with_zeros_and_keeps_unknown_classes():
    manifest = pd.concat([rows("LMU", "BAS", 3), rows("LMU", "XTRA", 1)], ignore_index=True)
    manifest["label"] = ["basophil"] * 3 + ["extra"]
    table = table_one(manifest)
    assert table.columns.name is None
    assert table["class"].tolist() == ["basophil", "extra", "total"]
    assert table["PBC"].tolist() == [0, 0, 0]
    assert table["LMU"].tolist() == [3, 1, 4] and table["total"].tolist() == [3, 1, 4]
    assert table["study_a"].iloc[0] == 1295 and pd.isna(table["study_a"].iloc[1])
    assert str(table["study_a"].dtype) == "Int64"


def test_wbc10_from_data_dir_reports_a_missing_dataset_and_merges_the_other(monkeypatch, tmp_path):
    calls = []

    def fake_read(name, data_dir, **kwargs):
        calls.append(name)
        if name == "lmu":
            raise LayoutError("no LMU here")
        return rows("PBC", "basophil", 1301, "BA"), pd.DataFrame({"path": ["/raw/x"], "reason": ["unreadable"]})

    monkeypatch.setattr(merge, "read_dataset", fake_read)
    manifest, skipped, excluded = wbc10_from_data_dir(tmp_path)
    assert calls == ["pbc", "lmu"]
    assert len(manifest) == 1300 and set(manifest["source"]) == {"PBC"}
    assert "(cap 1300, seed 0)" in excluded["reason"].iloc[0]
    pd.testing.assert_frame_equal(manifest, build_wbc10(rows("PBC", "basophil", 1301, "BA"), None, seed=0)[0])
    assert skipped.index.tolist() == [0, 1]
    assert skipped.to_dict("records") == [
        {"path": "/raw/x", "reason": "unreadable"},
        {"path": str(tmp_path / "lmu"), "reason": "missing dataset: no LMU here"},
    ]


def test_wbc10_from_data_dir_raises_the_pbc_error_when_both_are_missing(monkeypatch, tmp_path):
    def fake_read(name, data_dir, **kwargs):
        raise LayoutError(f"no {name}")

    monkeypatch.setattr(merge, "read_dataset", fake_read)
    with pytest.raises(LayoutError, match="^no pbc$"):
        wbc10_from_data_dir(tmp_path)


# ----------------------------------------------------------------------------- metrics


def test_classification_report_lists_every_class_with_three_digits():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.3, 0.7, 0.0]])
    text = classification_report_text(y, probs, ["a", "b", "c"])
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert lines["a"] == ["1.000", "0.500", "0.667", "2"]
    assert lines["b"] == ["0.667", "1.000", "0.800", "2"]
    assert lines["c"] == ["0.000", "0.000", "0.000", "0"]  # absent and never predicted: 0, not 1
    with pytest.raises(WbcError):
        classification_report_text(y, probs, ["a", "b"])


def test_specificity_edge_cases():
    # class 0: its one negative is predicted as 0 -> tn 0, fp 1: specificity 0.0 (defined)
    m = compute_metrics([0, 0, 1], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], ["a", "b"])
    assert m["per_class"]["a"]["specificity"] == 0.0
    assert m["per_class"]["b"]["specificity"] == 1.0
    # one class only in the truth: no negatives for it, specificity undefined
    m = compute_metrics([0, 0], [[0.9, 0.1], [0.6, 0.4]], ["a", "b"])
    assert m["per_class"]["a"]["specificity"] is None


def test_absent_middle_class_keeps_its_own_row_and_notes():
    y = [0, 0, 2, 2]
    probs = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["b"] == {
        "precision": 0.0,
        "recall": None,
        "specificity": 1.0,
        "f1": 0.0,
        "support": 0,
        "auc": None,
    }
    assert m["per_class"]["a"]["precision"] == 1.0 and m["per_class"]["a"]["recall"] == 0.5
    assert m["per_class"]["c"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["c"]["recall"] == 1.0
    assert m["notes"] == ["class 'b' is absent from the true labels: its AUC and recall are undefined"]


def test_a_class_never_predicted_has_precision_zero_and_a_single_image_class_has_recall():
    m = compute_metrics([0, 0, 1], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], ["a", "b"])
    assert m["per_class"]["b"]["precision"] == 0.0 and m["per_class"]["b"]["recall"] == 0.0
    assert m["balanced_accuracy"] == 0.5


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # one class: sklearn says so too
def test_single_class_truth_has_notes_and_no_aucs():
    m = compute_metrics([0, 0], [[1.0], [1.0]], ["a"])
    assert m["auc_macro"] is None and m["auc_micro"] is None
    assert m["notes"] == ["class 'a' is the only class in the true labels: its AUC and recall are undefined"]


def test_auc_micro_is_defined_for_two_classes_and_one_image():
    m = compute_metrics([1], [[0.3, 0.7]], ["a", "b"])
    assert m["auc_micro"] == 1.0
    m = compute_metrics([0, 1], [[0.6, 0.4], [0.3, 0.7]], ["a", "b"])
    assert m["auc_micro"] == 1.0


def test_confusion_normalised_rows_one_image_class_and_absent_class():
    cm = confusion([0, 1, 1], [0, 1, 0], 3, normalise="true")
    np.testing.assert_array_equal(cm, [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert cm.dtype == np.float64


def test_cross_entropy_clips_probabilities_above_one():
    assert cross_entropy([0], [[2.0, 0.0]]) == 0.0


def test_per_class_table_columns_and_rows():
    m = compute_metrics([0, 1], [[0.6, 0.4], [0.3, 0.7]], ["a", "b"])
    table = per_class_table(m)
    assert list(table.columns) == ["class", "precision", "recall", "specificity", "f1", "support", "auc"]
    assert table["class"].tolist() == ["a", "b"] and table["support"].tolist() == [1, 1]


# ----------------------------------------------------------------------------- split


def test_shared_classes_needs_min_images_in_both_sources_and_names_a_missing_source():
    from wbc.split import shared_classes

    manifest = pd.DataFrame(
        {
            "label": ["b", "b", "b", "a", "a", "c", "c", "c"],
            "source": ["PBC", "LMU", "LMU", "PBC", "PBC", "PBC", "PBC", "LMU"],
        }
    )
    assert shared_classes(manifest) == ["b", "c"]
    assert shared_classes(manifest, min_images=2) == []
    assert shared_classes(manifest, ("LMU", "PBC"), min_images=1) == ["b", "c"]
    with pytest.raises(WbcError, match="has no ALL images") as exc:
        shared_classes(manifest, ("PBC", "ALL"))
    assert "found sources: ['LMU', 'PBC']" in str(exc.value)


# ----------------------------------------------------------------------------- image checks


def test_pixel_limit_is_inclusive_and_says_why():
    from wbc.images import BadImageError, check_pixel_limit

    check_pixel_limit(10, 10, "x.png", 100)  # exactly at the limit: allowed
    check_pixel_limit(10**6, 10**6, "x.png", None)
    with pytest.raises(BadImageError) as exc:
        check_pixel_limit(10, 11, "x.png", 100)
    assert exc.value.reason == (
        "too large: 10x11 px (0.0 megapixels) is above the limit of 0.0001 megapixels (--max-pixels); not decoded"
    )
    with pytest.raises(BadImageError, match="8000x8000 px"):
        check_pixel_limit(8000, 8000, "x.png")  # default limit: 50 megapixels


def test_min_size_applies_to_the_shorter_side_and_is_inclusive():
    from wbc.images import BadImageError, check_min_size

    check_min_size(16, 400, "x.png")  # default minimum 16: allowed
    check_min_size(1, 1, "x.png", None)
    for w, h in ((15, 400), (400, 15)):
        with pytest.raises(BadImageError) as exc:
            check_min_size(w, h, "x.png")
        assert exc.value.reason == (
            f"too small: {w}x{h} px, below the minimum of 16 px a side (--min-size); not upscaled"
        )


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (b"\x89PNG\r\n\x1a\n....", "PNG"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"II+\x00", "TIFF"),
        (b"MM\x00+", "TIFF"),
        (b"BMxxxx", "BMP"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"\x00\x00\x00\x01Bud1\x00", "DS_STORE"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"xxxxxxxxWEBP", None),
        (b"\xff\xd8", None),
        (b"", None),
        (b"%PDF-1.4", None),
    ],
)
def test_sniff_format_reads_the_signature(data, kind):
    from wbc.images import sniff_format

    assert sniff_format(data) == kind
    assert sniff_format(bytearray(data) + b"\x00" * 40) == kind


def test_read_raw_file_size_limit_is_inclusive(tmp_path):
    import cv2

    from wbc.images import BadImageError, read_raw

    path = tmp_path / "cell.png"
    cv2.imwrite(str(path), np.full((20, 20, 3), 128, np.uint8))
    size = path.stat().st_size
    assert read_raw(path, max_bytes=size).shape == (20, 20, 3)
    with pytest.raises(BadImageError) as exc:
        read_raw(path, max_bytes=size - 1)
    assert exc.value.reason == (f"too large for an image file ({size:,} bytes; the limit is {size - 1:,}); not read")
    with pytest.raises(BadImageError, match="too large: 20x20 px"):
        read_raw(path, max_pixels=399)
    assert read_raw(path, max_pixels=400).shape == (20, 20, 3)


def test_header_size_from_bytes_and_path(tmp_path):
    import cv2

    from wbc.images import header_size

    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((7, 31, 3), np.uint8))
    assert header_size(path) == (31, 7)
    assert header_size(path.read_bytes()) == (31, 7)
    assert header_size(b"not an image at all") is None


# ----------------------------------------------------------------------------- black band


def test_black_band_width_and_minimum_width():
    from wbc.preprocess import describe_black_band, detect_black_band

    img = np.full((60, 50, 3), 180, np.uint8)
    img[:5] = 0  # 5 black rows at the top
    img[:, -3:] = 0  # 3 black columns at the right
    band = detect_black_band(img)
    assert band == {"edge": "top", "width": 5, "bands": {"top": 5, "right": 3}}
    assert describe_black_band(band) == "black band: top 5 px, right 3 px"
    assert detect_black_band(img, min_width=4) == {"edge": "top", "width": 5, "bands": {"top": 5}}
    assert detect_black_band(img, min_width=5)["bands"] == {"top": 5}
    assert detect_black_band(img, min_width=6) is None
    one = np.full((40, 40, 3), 180, np.uint8)
    one[-1] = 0
    assert detect_black_band(one) == {"edge": "bottom", "width": 1, "bands": {"bottom": 1}}
    gray = np.full((40, 40), 180, np.uint8)
    gray[:, :2] = 10  # at the threshold counts as black
    assert detect_black_band(gray) == {"edge": "left", "width": 2, "bands": {"left": 2}}
    gray[:, :2] = 11
    assert detect_black_band(gray) is None
