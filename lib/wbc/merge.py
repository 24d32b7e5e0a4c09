"""Merged manifests: ``wbc10`` (PBC + LMU through the ten-class map) and ``all4`` (the ALL set).

Balancing of ``wbc10`` (``cap``): per class, the cap is shared between the sources by
"water-filling": the smaller source takes all its images up to an equal share
(``cap // number_of_sources``), the larger source takes what is left, so both stay represented
and a class never exceeds ``cap``. Within a (class, source) the images kept are a seeded random
sample of the path-sorted rows, so the result depends only on the files, ``cap`` and ``seed``.
Every row left out (unmapped class or over the cap) is listed in ``excluded`` with its reason.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from wbc.errors import LayoutError, WbcError
from wbc.labels import ALL_CLASSES, STUDY_A_TABLE_ONE, WBC10_CLASSES, describe_source_label, load_label_map
from wbc.readers import MANIFEST_COLUMNS, SKIPPED_COLUMNS, read_dataset

SOURCES = ("PBC", "LMU")


def map_to_wbc10(manifest: pd.DataFrame, label_map: pd.DataFrame | None = None) -> pd.Series:
    """The wbc10 class of each row (``""`` when the map does not name it).

    An entry with a ``sub_label`` matches that PBC prefix only; an empty one matches the whole
    folder / class code.
    """
    table = load_label_map() if label_map is None else label_map
    keys = zip(table["source"], table["source_label"], table["sub_label"])
    lookup = dict(zip(keys, table["class"]))
    subs = manifest["sub_label"].fillna("").astype(str)
    classes = [
        lookup.get((s, sl, sub), lookup.get((s, sl, ""), ""))
        for s, sl, sub in zip(manifest["source"], manifest["source_label"], subs)
    ]
    return pd.Series(classes, index=manifest.index, dtype=object, name="label")


def share_cap(counts: dict[str, int], cap: int | None) -> dict[str, int]:
    """How many images each source keeps for one class (water-filling; see the module doc)."""
    if not cap or sum(counts.values()) <= cap:
        return dict(counts)
    quota, remaining = {}, cap
    ordered = sorted(counts, key=lambda s: (counts[s], s))
    for i, source in enumerate(ordered):
        quota[source] = min(counts[source], remaining // (len(ordered) - i))
        remaining -= quota[source]
    return quota


def _sample(rows: pd.DataFrame, n: int, seed: int, key: str) -> pd.DataFrame:
    """``n`` rows drawn with a generator seeded by ``seed`` and ``key`` (stable across runs)."""
    rows = rows.sort_values("path")
    if n >= len(rows):
        return rows
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return rows.iloc[np.sort(rng.choice(len(rows), size=n, replace=False))]


def build_wbc10(
    pbc: pd.DataFrame | None,
    lmu: pd.DataFrame | None,
    cap: int | None = 1300,
    seed: int = 0,
    label_map: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge PBC and LMU manifests into the ten-class ``wbc10`` manifest.

    Returns ``(manifest, excluded)``: ``manifest`` has the manifest columns with ``label`` the
    wbc10 class; ``excluded`` (``path, reason``) lists rows outside the ten classes and rows
    over the per-class ``cap`` (``None`` or 0: no cap). Either input may be None or empty.
    """
    frames = [df[MANIFEST_COLUMNS] for df in (pbc, lmu) if df is not None and not df.empty]
    if not frames:
        raise WbcError("build_wbc10 needs at least one non-empty manifest (PBC and/or LMU)")
    rows = pd.concat(frames, ignore_index=True)
    rows["sub_label"] = rows["sub_label"].fillna("").astype(str)
    rows["label"] = map_to_wbc10(rows, label_map)
    unmapped = rows[rows["label"] == ""]
    excluded = [
        pd.DataFrame(
            {
                "path": unmapped["path"],
                "reason": [
                    f"not one of the ten classes: {describe_source_label(s, sl, sub)}"
                    for s, sl, sub in zip(unmapped["source"], unmapped["source_label"], unmapped["sub_label"])
                ],
            }
        )
    ]
    kept = []
    mapped = rows[rows["label"] != ""]
    for label, group in mapped.groupby("label", sort=True):
        per_source = {s: g for s, g in group.groupby("source")}
        quota = share_cap({s: len(g) for s, g in per_source.items()}, cap)
        for source, g in per_source.items():
            chosen = _sample(g, quota[source], seed, f"{label}/{source}")
            kept.append(chosen)
            dropped = g.drop(chosen.index)
            excluded.append(
                pd.DataFrame(
                    {
                        "path": dropped["path"],
                        "reason": (
                            f"over the cap: {label} keeps {quota[source]} of {len(g)} {source} images "
                            f"(cap {cap}, seed {seed})"
                        ),
                    }
                )
            )
    manifest = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=MANIFEST_COLUMNS)
    manifest = manifest[MANIFEST_COLUMNS].sort_values("path", ignore_index=True)
    excluded_df = pd.concat(excluded, ignore_index=True)[SKIPPED_COLUMNS].sort_values("path", ignore_index=True)
    return manifest, excluded_df


def table_one(manifest: pd.DataFrame, published: bool = True) -> pd.DataFrame:
    """Images per class and source, like Study A's Table I, with a ``total`` row.

    Columns ``class, PBC, LMU, total`` (+ ``study_a``: the published counts, when ``published``).
    """
    counts = pd.crosstab(manifest["label"], manifest["source"])
    for source in SOURCES:
        if source not in counts:
            counts[source] = 0
    order = [c for c in WBC10_CLASSES if c in counts.index] + sorted(set(counts.index) - set(WBC10_CLASSES))
    table = counts.reindex(order)[[*SOURCES, *sorted(set(counts.columns) - set(SOURCES))]]
    table["total"] = table.sum(axis=1)
    if published:
        table["study_a"] = [STUDY_A_TABLE_ONE.get(c, pd.NA) for c in table.index]
    table.loc["total"] = table.sum(axis=0, numeric_only=True)
    table = table.rename_axis("class").reset_index()
    table.columns.name = None
    return table.astype({c: "Int64" for c in table.columns if c != "class"})


def wbc10_from_data_dir(
    data_dir: str | os.PathLike, cap: int | None = 1300, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read PBC and LMU under ``data_dir`` and merge them: ``(manifest, skipped, excluded)``.

    A dataset that is absent is reported in ``skipped`` and the merge goes on with the other;
    when both are absent the LayoutError of the PBC reader is raised.
    """
    manifests, skipped, errors = {}, [], {}
    for name in ("pbc", "lmu"):
        try:
            manifests[name], s = read_dataset(name, data_dir)
            skipped.append(s)
        except LayoutError as exc:
            errors[name] = exc
            skipped.append(pd.DataFrame([{"path": str(Path(data_dir) / name), "reason": f"missing dataset: {exc}"}]))
    if not manifests:
        raise errors["pbc"]
    manifest, excluded = build_wbc10(manifests.get("pbc"), manifests.get("lmu"), cap=cap, seed=seed)
    return manifest, pd.concat(skipped, ignore_index=True), excluded


def build_all4(
    source: pd.DataFrame | str | os.PathLike, version: str = "Original"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The four-class ALL manifest of one ``version`` (Original or Segmented).

    ``source`` is an ALL manifest (from ``read_all``) or a data folder holding ``ALL_Kaggle/``.
    Returns ``(manifest, skipped)``; ``skipped`` is empty when a manifest is given.
    """
    if version not in ("Original", "Segmented"):
        raise WbcError(f"unknown ALL version {version!r}: choose Original or Segmented")
    if isinstance(source, pd.DataFrame):
        manifest, skipped = source, pd.DataFrame(columns=SKIPPED_COLUMNS)
    else:
        manifest, skipped = read_dataset("all", source, version=version)
    if "version" in manifest:
        manifest = manifest[manifest["version"] == version]
    else:
        manifest = manifest.assign(version=version)
    unknown = sorted(set(manifest["label"]) - set(ALL_CLASSES))
    if unknown:
        raise WbcError(f"ALL manifest has labels {unknown} outside {list(ALL_CLASSES)}")
    if manifest.empty:
        raise WbcError(f"the ALL manifest has no {version} images")
    return manifest[MANIFEST_COLUMNS + ["version"]].sort_values("path", ignore_index=True), skipped
