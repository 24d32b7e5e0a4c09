"""The ten-class map (against GUIDE section 3), the wbc10 merge with its cap, Table I, all4."""

from __future__ import annotations

import pandas as pd
import pytest

from wbc.errors import WbcError
from wbc.labels import LMU_CODES, PBC_PREFIXES, STUDY_A_TABLE_ONE, WBC10_CLASSES, load_label_map
from wbc.merge import build_all4, build_wbc10, map_to_wbc10, share_cap, table_one

# GUIDE section 3, transcribed: class -> (PBC folder[/prefix] or None, LMU code)
GUIDE_MAP = {
    "basophil": ("basophil", "BAS"),
    "eosinophil": ("eosinophil", "EOS"),
    "lymphocyte": ("lymphocyte", "LYT"),
    "monocyte": ("monocyte", "MON"),
    "neutrophil_segmented": ("neutrophil/SNE", "NGS"),
    "neutrophil_band": ("neutrophil/BNE", "NGB"),
    "myeloblast": (None, "MYO"),
    "myelocyte": ("ig/MY", "MYB"),
    "promyelocyte": ("ig/PMY", "PMO"),
    "metamyelocyte": ("ig/MMY", "MMZ"),
}


def test_wbc10_classes_follow_study_a_table_one():
    assert WBC10_CLASSES == tuple(GUIDE_MAP)
    assert tuple(STUDY_A_TABLE_ONE) == WBC10_CLASSES
    assert sum(STUDY_A_TABLE_ONE.values()) == 12450


def test_label_map_file_matches_guide_section_3():
    table = load_label_map()
    got = {}
    for row in table.itertuples(index=False):
        cls, source, source_label, sub_label = row[0], row.source, row.source_label, row.sub_label
        entry = source_label + (f"/{sub_label}" if sub_label else "")
        got.setdefault(cls, {})[source] = entry
    expected = {cls: {k: v for k, v in (("PBC", pbc), ("LMU", lmu)) if v} for cls, (pbc, lmu) in GUIDE_MAP.items()}
    assert got == expected
    lmu = dict(zip(table.loc[table["source"] == "LMU", "source_label"], table.loc[table["source"] == "LMU", "class"]))
    assert lmu["MYO"] == "myeloblast" and lmu["MYB"] == "myelocyte"
    assert not {"LYA", "PMB", "EBO", "KSC", "MOB"} & set(lmu)
    assert set(lmu) <= set(LMU_CODES)
    for row in table[table["source"] == "PBC"].itertuples(index=False):
        assert row.source_label in PBC_PREFIXES
        assert row.sub_label == "" or row.sub_label in PBC_PREFIXES[row.source_label]


@pytest.mark.parametrize(
    "content, message",
    [
        ("class,source,source_label,sub_label,note\nbasofil,LMU,BAS,,\n", "unknown class"),
        ("class,source,source_label,sub_label,note\nbasophil,TCIA,BAS,,\n", "unknown source"),
        ("class,source,source_label,sub_label,note\nbasophil,LMU,BAS,,\neosinophil,LMU,BAS,,\n", "more than once"),
        ("class,source,source_label\nbasophil,LMU,BAS\n", "lacks column"),
    ],
)
def test_load_label_map_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "map.csv"
    path.write_text(content)
    with pytest.raises(WbcError, match=message) as exc:
        load_label_map(path)
    assert str(path) in str(exc.value)


def fake_manifest(source: str, counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    """Rows without files (the merge never opens images)."""
    rows = []
    for (folder, sub), n in counts.items():
        for i in range(n):
            rows.append(
                {
                    "path": f"/raw/{source}/{folder}/{sub or folder}_{i:04d}.img",
                    "source": source,
                    "source_label": folder,
                    "sub_label": sub,
                    "label": folder,
                }
            )
    return pd.DataFrame(rows)


PBC = fake_manifest(
    "PBC",
    {
        ("basophil", "BA"): 30,
        ("eosinophil", "EO"): 80,
        ("erythroblast", "ERB"): 5,
        ("ig", "MY"): 12,
        ("ig", "IG"): 3,
        ("neutrophil", "SNE"): 40,
        ("neutrophil", "NEUTROPHIL"): 2,
    },
)
LMU = fake_manifest(
    "LMU",
    {("BAS", ""): 4, ("EOS", ""): 60, ("MYO", ""): 70, ("MYB", ""): 3, ("LYA", ""): 2, ("PMB", ""): 2, ("NGS", ""): 90},
)


def test_map_to_wbc10_uses_prefixes_and_codes():
    classes = map_to_wbc10(pd.concat([PBC, LMU], ignore_index=True))
    both = pd.concat([PBC, LMU], ignore_index=True).assign(cls=classes)
    by = both.groupby(["source_label", "sub_label"])["cls"].first().to_dict()
    assert by[("ig", "MY")] == "myelocyte" and by[("MYB", "")] == "myelocyte" and by[("MYO", "")] == "myeloblast"
    assert by[("neutrophil", "SNE")] == "neutrophil_segmented"
    for unmapped in [("ig", "IG"), ("neutrophil", "NEUTROPHIL"), ("erythroblast", "ERB"), ("LYA", ""), ("PMB", "")]:
        assert by[unmapped] == ""


@pytest.mark.parametrize(
    "counts, cap",
    [
        ({"PBC": 100, "LMU": 10}, 50),
        ({"PBC": 100, "LMU": 100}, 51),
        ({"PBC": 3, "LMU": 4}, 50),
        ({"LMU": 70}, 50),
        ({"PBC": 30, "LMU": 30}, 50),
        ({"PBC": 1, "LMU": 1000}, 2),
    ],
)
def test_share_cap_fills_cap_and_keeps_both_sources(counts, cap):
    quota = share_cap(counts, cap)
    assert sum(quota.values()) == min(cap, sum(counts.values()))
    assert all(0 <= quota[s] <= counts[s] for s in counts)
    assert all(quota[s] >= min(counts[s], cap // len(counts)) for s in counts)  # fair share guaranteed
    assert share_cap(counts, None) == counts


def test_build_wbc10_caps_excludes_and_accounts_for_every_row():
    manifest, excluded = build_wbc10(PBC, LMU, cap=50, seed=0)
    assert list(manifest.columns) == ["path", "source", "source_label", "sub_label", "label"]
    assert manifest["path"].is_monotonic_increasing
    every = set(PBC["path"]) | set(LMU["path"])
    assert set(manifest["path"]).isdisjoint(excluded["path"])
    assert set(manifest["path"]) | set(excluded["path"]) == every
    assert len(manifest) + len(excluded) == len(every)
    sizes = manifest.groupby(["label", "source"]).size().to_dict()
    assert sizes[("eosinophil", "LMU")] == 25 and sizes[("eosinophil", "PBC")] == 25
    assert sizes[("basophil", "PBC")] == 30 and sizes[("basophil", "LMU")] == 4  # under the cap: all kept
    assert sizes[("myeloblast", "LMU")] == 50
    assert sizes[("neutrophil_segmented", "PBC")] == 25 and sizes[("neutrophil_segmented", "LMU")] == 25
    reasons = dict(zip(excluded["path"], excluded["reason"]))
    lya = LMU.loc[LMU["source_label"] == "LYA", "path"].iloc[0]
    assert reasons[lya].startswith("not one of the ten classes") and "atypical lymphocyte" in reasons[lya]
    erb = PBC.loc[PBC["source_label"] == "erythroblast", "path"].iloc[0]
    assert "PBC erythroblast" in reasons[erb]
    assert sum(r.startswith("over the cap") for r in reasons.values()) == (80 - 25) + (60 - 25) + 20 + 15 + 65


def test_build_wbc10_is_deterministic_and_seeded():
    a, _ = build_wbc10(PBC, LMU, cap=20, seed=3)
    shuffled = PBC.sample(frac=1, random_state=1), LMU.sample(frac=1, random_state=2)
    b, _ = build_wbc10(*shuffled, cap=20, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c, _ = build_wbc10(PBC, LMU, cap=20, seed=4)
    assert set(a["path"]) != set(c["path"])
    assert len(a) == len(c)


def test_build_wbc10_with_one_source_or_none():
    only_lmu, _ = build_wbc10(None, LMU, cap=None)
    assert set(only_lmu["source"]) == {"LMU"} and len(only_lmu) == 4 + 60 + 70 + 3 + 90
    with pytest.raises(WbcError, match="at least one"):
        build_wbc10(None, PBC.iloc[:0])


def test_table_one_counts_per_source_with_total_row():
    manifest, _ = build_wbc10(PBC, LMU, cap=50, seed=0)
    table = table_one(manifest)
    assert list(table.columns) == ["class", "PBC", "LMU", "total", "study_a"]
    body = table[table["class"] != "total"]
    assert list(body["class"]) == [c for c in WBC10_CLASSES if c in set(manifest["label"])]
    for row in body.itertuples(index=False):
        sub = manifest[manifest["label"] == row[0]]
        assert (row.PBC, row.LMU, row.total) == (
            (sub["source"] == "PBC").sum(),
            (sub["source"] == "LMU").sum(),
            len(sub),
        )
        assert row.study_a == STUDY_A_TABLE_ONE[row[0]]
    total = table[table["class"] == "total"].iloc[0]
    assert total["total"] == len(manifest) and total["PBC"] + total["LMU"] == len(manifest)
    assert "study_a" not in table_one(manifest, published=False)


def test_build_all4_from_manifest():
    rows = pd.DataFrame(
        {
            "path": [
                f"/a/{v}/{c}/{i}.jpg"
                for v in ("Original", "Segmented")
                for c in ("Benign", "Early", "Pre", "Pro")
                for i in range(2)
            ]
        }
    )
    parts = rows["path"].str.split("/")
    rows = rows.assign(source="ALL", source_label=parts.str[3], sub_label="", label=parts.str[3], version=parts.str[2])
    seg, skipped = build_all4(rows, version="Segmented")
    assert len(seg) == 8 and set(seg["version"]) == {"Segmented"} and skipped.empty
    with pytest.raises(WbcError, match="unknown ALL version"):
        build_all4(rows, version="Colour")
    with pytest.raises(WbcError, match="outside"):
        build_all4(rows.assign(label="Healthy"))


def test_build_wbc10_from_csv_round_trip(tmp_path):
    """Manifests read back from CSV have NaN for empty sub-labels; the merge must not care."""
    PBC.to_csv(tmp_path / "pbc.csv", index=False)
    LMU.to_csv(tmp_path / "lmu.csv", index=False)
    pbc, lmu = pd.read_csv(tmp_path / "pbc.csv"), pd.read_csv(tmp_path / "lmu.csv")
    assert lmu["sub_label"].isna().all()
    from_csv, _ = build_wbc10(pbc, lmu, cap=50, seed=0)
    direct, _ = build_wbc10(PBC, LMU, cap=50, seed=0)
    assert from_csv["path"].tolist() == direct["path"].tolist()
    assert from_csv["label"].tolist() == direct["label"].tolist()
