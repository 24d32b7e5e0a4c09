"""Stratified, duplicate-aware train/val/test splits, the leakage audit, the split folder.

Duplicates leak: the same cell in train and test inflates test accuracy. Images are joined into
*groups* (``duplicate_groups``): byte-identical files (same SHA-256), near duplicates (perceptual
hashes within a few bits, confirmed by comparing thumbnails pixel by pixel: ``wbc.images``) and,
in ALL, the Original and Segmented versions of one picture. A group is placed in one split as a
whole, class by class, with a seed (``split_manifest``); ``audit_splits`` lists every group,
any group that spans splits (a leak) and any class missing from a split.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wbc import fileio
from wbc.config import DEFAULT_FRACTIONS, SPLITS
from wbc.errors import WbcError
from wbc.images import (  # noqa: F401 (re-exported)
    PHASH_THRESHOLD,
    PIXEL_THRESHOLD,
    hamming,
    perceptual_hash,
    pixel_distance,
    read_image,
    thumbnail,
    thumbnail_distance,
)
from wbc.locking import FolderLock

CROSS_LABEL_POLICIES = ("drop_both", "keep_one", "report")
AUDIT_COLUMNS = ("kind", "group", "labels", "splits", "n", "paths", "action")
#: The files a split folder holds (``classes.txt`` last: its presence means "complete").
SPLIT_FILES = ("train.csv", "val.csv", "test.csv", "audit.csv", "classes.txt")


def _missing(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(True, index=df.index)
    values = df[column]
    return values.isna() | (values.astype(str).str.strip() == "")


def content_hashes(manifest: pd.DataFrame, *, progress: bool = False) -> pd.DataFrame:
    """A copy of ``manifest`` with ``sha256`` (file bytes) and ``phash`` filled where missing.

    Processed manifests already carry both (``sha256`` of the raw file); otherwise each image
    is read from ``path``. An unreadable file raises a WbcError naming it.
    """
    from tqdm.auto import tqdm

    df = manifest.copy()
    if "phash" in df.columns:  # a CSV read without dtype=str may have parsed all-digit hashes as numbers
        if pd.api.types.is_integer_dtype(df["phash"]):
            df["phash"] = df["phash"].astype(str).str.zfill(16)
        elif pd.api.types.is_float_dtype(df["phash"]):
            df["phash"] = ""  # not recoverable: recomputed from the images
    need_sha, need_phash = _missing(df, "sha256"), _missing(df, "phash")
    todo = df.index[need_sha | need_phash]
    if len(todo) == 0:
        return df
    for column in ("sha256", "phash"):
        if column not in df.columns:
            df[column] = ""
        df[column] = df[column].astype(object)
    for idx in tqdm(todo, desc="hashing", unit="img", disable=not progress):
        path = str(df.at[idx, "path"])
        if need_sha[idx]:
            try:
                df.at[idx, "sha256"] = fileio.file_digest(path)
            except OSError as exc:
                raise WbcError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if need_phash[idx]:
            df.at[idx, "phash"] = perceptual_hash(read_image(path))
    return df


# ----------------------------------------------------------------------------- groups


def near_duplicate_pairs(phashes: Sequence[str], threshold: int = PHASH_THRESHOLD) -> Iterator[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits
    (candidates only). All pairs are compared with numpy in blocks of about 8 million, so memory
    stays bounded: tens of thousands of images take seconds."""
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    n = len(values)
    block = max(1, (1 << 23) // max(n, 1))
    for start in range(0, n, block):
        dist = np.bitwise_count(values[start : start + block, None] ^ values[None, start:])
        ii, jj = np.nonzero(dist <= threshold)
        ii, jj = ii + start, jj + start
        yield from zip(ii[jj > ii].tolist(), jj[jj > ii].tolist())


def confirmed_near_duplicate_pairs(
    paths: Sequence[str],
    phashes: Sequence[str],
    phash_threshold: int = PHASH_THRESHOLD,
    pixel_threshold: float | None = PIXEL_THRESHOLD,
) -> list[tuple[int, int]]:
    """The candidate pairs of ``near_duplicate_pairs`` whose images, read from ``paths`` (only
    those, each once), lie less than ``pixel_threshold`` apart (``pixel_distance``);
    ``pixel_threshold=None`` trusts the hashes alone."""
    candidates = list(near_duplicate_pairs(phashes, phash_threshold))
    if pixel_threshold is None:
        return candidates
    thumbs: dict[int, np.ndarray] = {}

    def thumb(i: int) -> np.ndarray:
        if i not in thumbs:
            thumbs[i] = thumbnail(read_image(paths[i]))
        return thumbs[i]

    return [(i, j) for i, j in candidates if thumbnail_distance(thumb(i), thumb(j)) < pixel_threshold]


def duplicate_groups(
    manifest: pd.DataFrame,
    phash_threshold: int | None = PHASH_THRESHOLD,
    *,
    pixel_threshold: float | None = PIXEL_THRESHOLD,
) -> pd.Series:
    """Group id per row (``Series`` named ``group``, aligned with ``manifest``).

    Rows share a group when linked, directly or through other rows, by: the same ``sha256``;
    near duplicates (``confirmed_near_duplicate_pairs``; ``phash_threshold=None``: exact copies
    only); or, with a ``version`` column (ALL), the same source, class folder and file name in
    another version. Hashes are computed when missing. Ids follow each group's first path in
    sorted order, not the row order. The pixel check matters because groups chain: with hashes
    alone, look-alike cells of different classes would link into one group.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if manifest.empty:
        return pd.Series([], index=manifest.index, name="group", dtype=int)
    df = (
        content_hashes(manifest)
        if (_missing(manifest, "sha256").any() or (phash_threshold is not None and _missing(manifest, "phash").any()))
        else manifest
    )
    n = len(df)
    keys = [df["sha256"].astype(str)]
    if "version" in df.columns:
        names = df["raw_path"] if "raw_path" in df.columns else df["path"]
        folder = df["source_label"] if "source_label" in df.columns else df["label"]
        source = df["source"].astype(str) if "source" in df.columns else ""
        keys.append(source + "|" + folder.astype(str) + "|" + names.astype(str).map(os.path.basename))
    edges: list[tuple[int, int]] = []
    for key in keys:  # link every row to the first row with the same key
        first = pd.Series(range(n)).groupby(key.to_numpy()).transform("min").to_numpy()
        edges += zip(first.tolist(), range(n))
    if phash_threshold is not None:
        edges += confirmed_near_duplicate_pairs(
            df["path"].astype(str).tolist(), df["phash"].astype(str).tolist(), phash_threshold, pixel_threshold
        )
    rows, cols = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    _, roots = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)), directed=False)
    first_path = pd.Series(df["path"].astype(str).to_numpy()).groupby(roots).min()
    rank = {root: k for k, root in enumerate(first_path.sort_values(kind="stable").index)}
    return pd.Series([rank[r] for r in roots], index=manifest.index, name="group", dtype=int)


# ----------------------------------------------------------------------------- splits


class Splits(dict):
    """``{"train", "val", "test"}`` DataFrames; ``.dropped`` holds the rows the cross-label
    policy removed (with a ``reason`` column), so ``audit_splits`` can report them."""

    def __init__(self, parts: dict[str, pd.DataFrame], dropped: pd.DataFrame):
        super().__init__(parts)
        self.dropped = dropped


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    fr = np.asarray(list(fractions), dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0, atol=1e-6) or fr[0] <= 0:
        raise WbcError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1 "
            f"with train > 0, got {list(fractions)}"
        )
    return fr


def _resolve_cross_label(df: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off rows of groups that hold several labels, per ``policy``; returns (kept, dropped)."""
    nlabels = df.groupby("group")["label"].nunique()
    mixed = df["group"].isin(nlabels.index[nlabels > 1])
    if policy == "report" or not mixed.any():
        return df, df.iloc[0:0].assign(reason=pd.Series(dtype=object))
    if policy == "drop_both":
        drop = mixed
    else:  # keep_one: keep the label of the group's first path, drop the other labels
        first_label = df.sort_values("path").groupby("group")["label"].first()
        drop = mixed & (df["label"] != df["group"].map(first_label))
    labels = df[mixed].groupby("group")["label"].agg(lambda s: ", ".join(sorted(set(s))))
    dropped = df[drop].copy()
    dropped["reason"] = "same image under several labels (" + dropped["group"].map(labels) + "): " + policy
    return df[~drop], dropped


def _allocate(df: pd.DataFrame, fractions: np.ndarray, seed: int) -> pd.Series:
    """Split index (0, 1, 2) per group: class by class, groups shuffled with ``seed``, largest
    first, each to the split furthest below its target; an empty split gets a group first."""
    rng = np.random.default_rng(seed)
    group_label = df.sort_values("path").groupby("group")["label"].first()
    group_size = df.groupby("group").size()
    active = [k for k in range(3) if fractions[k] > 0]
    assignment: dict[int, int] = {}
    for label in sorted(group_label.unique()):
        gids = np.sort(group_label.index[group_label == label].to_numpy())
        gids = gids[rng.permutation(len(gids))]
        sizes = group_size.loc[gids].to_numpy()
        gids = gids[np.argsort(-sizes, kind="stable")]
        target = fractions * group_size.loc[gids].sum()
        count = np.zeros(3)
        for gid in gids:
            k = max(active, key=lambda s: (count[s] == 0, target[s] - count[s], -s))
            assignment[int(gid)] = k
            count[k] += group_size[gid]
    return df["group"].map(assignment)


def check_labels(manifest: pd.DataFrame) -> None:
    """WbcError naming the rows whose label is empty (or blank, or holds a line break): such a
    label would become a blank line in ``classes.txt``, and its images a class without a name."""
    labels = manifest["label"]
    text = labels.astype(str)
    bad = labels.isna() | (text.str.strip() == "") | text.str.contains(r"[\r\n]", regex=True)
    if bad.any():
        shown = [
            f"row {i}: {manifest.at[i, 'path'] if 'path' in manifest.columns else '?'} (label {labels.at[i]!r})"
            for i in manifest.index[bad][:10]
        ]
        more = f"\n  ... and {int(bad.sum()) - 10} more" if bad.sum() > 10 else ""
        raise WbcError(
            f"{int(bad.sum())} row(s) have an empty or unusable label (a class needs a "
            "non-blank name on one line):\n  "
            + "\n  ".join(shown)
            + more
            + "\nGive those images a class or remove the rows, then split again."
        )


def split_manifest(
    manifest: pd.DataFrame,
    fractions: Sequence[float] = DEFAULT_FRACTIONS["wbc10"],
    seed: int = 0,
    *,
    cross_label: str = "drop_both",
    phash_threshold: int | None = PHASH_THRESHOLD,
) -> Splits:
    """Stratified, group-aware split; returns ``{"train", "val", "test"}`` DataFrames (a ``Splits``).

    Study A used 80/12/8 (wbc10), Study B 70/15/15 (all4). Each split keeps the manifest's
    columns plus ``sha256``, ``phash`` and ``group``; a group never spans splits. Within each
    class, groups are shuffled with ``seed`` and dealt so each split gets its fraction and every
    class with at least three groups appears in every split. Rows are sorted by label and path.

    ``cross_label``, for one image filed under several labels (PBC has one such pair):
    ``"drop_both"`` (default: which label is right is unknown; the dropped rows are in
    ``splits.dropped`` and the audit), ``"keep_one"`` (the label of the first path in sorted
    order) or ``"report"`` (keep all copies together and only report them).
    """
    if cross_label not in CROSS_LABEL_POLICIES:
        raise WbcError(f"unknown cross-label policy {cross_label!r}: choose one of {', '.join(CROSS_LABEL_POLICIES)}")
    fr = _check_fractions(fractions)
    missing = [c for c in ("path", "label") if c not in manifest.columns]
    if missing:
        raise WbcError(f"manifest lacks column(s) {', '.join(missing)}")
    if manifest.empty:
        raise WbcError("manifest is empty: nothing to split")
    check_labels(manifest)
    df = content_hashes(manifest.reset_index(drop=True))
    df["group"] = duplicate_groups(df, phash_threshold)
    kept, dropped = _resolve_cross_label(df, cross_label)
    where = _allocate(kept, fr, seed)
    parts = {
        name: kept[where == k].sort_values(["label", "path"], kind="stable").reset_index(drop=True)
        for k, name in enumerate(SPLITS)
    }
    return Splits(parts, dropped.sort_values(["label", "path"], kind="stable").reset_index(drop=True))


# ----------------------------------------------------------------------------- audit


def audit_splits(
    splits: dict[str, pd.DataFrame], dropped: pd.DataFrame | None = None, phash_threshold: int | None = PHASH_THRESHOLD
) -> pd.DataFrame:
    """One row per finding (``kind, group, labels, splits, n, paths, action``): ``across_splits``
    (a group in more than one split: a leak), ``cross_label`` (one image under several labels),
    ``duplicate`` (copies with one label, kept together), ``class_missing`` (a class absent from a
    non-empty split). Groups are computed when the splits have none; ``dropped`` defaults to
    ``splits.dropped``."""
    parts = {n: splits[n] for n in SPLITS if n in splits}
    dropped = getattr(splits, "dropped", None) if dropped is None else dropped
    if dropped is not None:
        parts["dropped"] = dropped
    frames = [df.assign(_split=n) for n, df in parts.items() if len(df)]
    if not frames:
        return pd.DataFrame(columns=list(AUDIT_COLUMNS))
    both = pd.concat(frames, ignore_index=True)
    if "group" not in both.columns or _missing(both, "group").any():
        both["group"] = duplicate_groups(both, phash_threshold)
    both["group"] = both["group"].astype(int)
    shown = both["raw_path"] if "raw_path" in both.columns else both["path"]
    both["_shown"] = shown.astype(str)
    rows = []
    for gid, g in both.groupby("group", sort=True):
        if len(g) < 2:
            continue
        placed = [s for s in SPLITS if s in set(g["_split"])]
        labels = sorted(set(g["label"].astype(str)))
        gone = g[g["_split"] == "dropped"]
        if len(placed) > 1:
            kind, action = "across_splits", "none: this group leaks between splits"
        elif len(labels) > 1:
            kind = "cross_label"
            if gone.empty:
                action = f"reported only; kept together in {placed[0]}"
            elif not placed:
                action = f"dropped all {len(g)} copies (label ambiguous)"
            else:
                kept_labels = sorted(set(g.loc[g["_split"] != "dropped", "label"].astype(str)))
                action = f"kept {', '.join(kept_labels)} in {placed[0]}; dropped {len(gone)}"
        else:
            kind = "duplicate"
            action = f"kept together in {placed[0]}" if placed else f"dropped all {len(g)} copies"
        rows.append(
            {
                "kind": kind,
                "group": int(gid),
                "labels": ";".join(labels),
                "splits": ";".join(placed + (["dropped"] if len(gone) else [])),
                "n": len(g),
                "paths": ";".join(sorted(g["_shown"])),
                "action": action,
            }
        )
    kept = both[both["_split"] != "dropped"]
    all_labels = sorted(set(kept["label"].astype(str)))
    for name in SPLITS:
        present = set(kept.loc[kept["_split"] == name, "label"].astype(str))
        if not present:
            continue
        for label in all_labels:
            if label not in present:
                n_groups = kept.loc[kept["label"].astype(str) == label, "group"].nunique()
                rows.append(
                    {
                        "kind": "class_missing",
                        "group": -1,
                        "labels": label,
                        "splits": name,
                        "n": 0,
                        "paths": "",
                        "action": f"none: the class has only {n_groups} group(s)",
                    }
                )
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def class_counts(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals (``eda.class_counts`` by split)."""
    from wbc.eda import class_counts as counts

    names = [name for name in SPLITS if name in splits]
    table = counts(pd.concat([splits[n].assign(split=n) for n in names], ignore_index=True), "split")
    return table.reindex(columns=[*names, "total"], fill_value=0)


def write_split_folder(
    splits: dict[str, pd.DataFrame], out_dir, *, phash_threshold: int | None = PHASH_THRESHOLD
) -> pd.DataFrame:
    """Write ``train/val/test.csv``, ``audit.csv`` and ``classes.txt`` (sorted class names, one per
    line = class index) into ``out_dir`` as a unit, under its lock; returns the audit.

    The files go into a temporary folder that then replaces ``out_dir`` (``fileio.replace_folder``),
    so ``out_dir`` never mixes two splits; other files in ``out_dir`` are carried over.
    """
    out_dir = Path(os.path.abspath(out_dir))
    for name in SPLITS:
        if name not in splits:
            raise WbcError(f"the splits lack {name!r}: expected {', '.join(SPLITS)}")
        check_labels(splits[name])
    classes = sorted(set().union(*(set(splits[name]["label"].astype(str)) for name in SPLITS)))
    if not classes:
        raise WbcError(f"every split is empty: nothing to write to {out_dir}")
    audit = audit_splits(splits, phash_threshold=phash_threshold)
    with FolderLock(out_dir, "split"):
        if out_dir.exists() and not out_dir.is_dir():
            raise WbcError(f"{out_dir}: exists and is not a folder")
        tmp = fileio.temporary_sibling(out_dir, "new")
        carried: list[str] = []
        try:
            for name in SPLITS:
                fileio.write_csv_atomic(splits[name], tmp / f"{name}.csv")
            fileio.write_csv_atomic(audit, tmp / "audit.csv")
            fileio.write_text_atomic(tmp / "classes.txt", "".join(f"{c}\n" for c in classes))
            if out_dir.is_dir():
                for entry in sorted(out_dir.iterdir()):  # not a split's file: carried over, never lost
                    if entry.name not in SPLIT_FILES:
                        os.replace(entry, tmp / entry.name)
                        carried.append(entry.name)
            fileio.replace_folder(tmp, out_dir)
        except BaseException:
            for name in carried:  # the old folder is still in place: give its files back
                if (tmp / name).exists() or (tmp / name).is_symlink():
                    os.replace(tmp / name, out_dir / name)
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return audit


# ----------------------------------------------------------------------------- external validation


def shared_classes(manifest: pd.DataFrame, sources: tuple[str, str] = ("PBC", "LMU"), min_images: int = 1) -> list[str]:
    """Labels with at least ``min_images`` images in every one of ``sources``, sorted (as classes.txt)."""
    counts = pd.crosstab(manifest["label"], manifest["source"])
    missing = [s for s in sources if s not in counts.columns]
    if missing:
        raise WbcError(
            f"the manifest has no {', '.join(missing)} images: external validation needs "
            f"both {sources[0]} and {sources[1]} (found sources: {sorted(counts.columns)})"
        )
    ok = (counts[list(sources)] >= min_images).all(axis=1)
    return sorted(str(label) for label, shared in ok.items() if shared)


@dataclass(frozen=True)
class ExternalSplit:
    """Two split folders: ``internal`` (train/val/test from one source), ``external`` (test from the other)."""

    internal: Path
    external: Path
    classes: list[str]

    def counts(self) -> pd.DataFrame:
        """Images per class in internal train / val / test and the external test, with totals."""
        parts = {name: pd.read_csv(self.internal / f"{name}.csv") for name in SPLITS}
        parts["external test"] = pd.read_csv(self.external / "test.csv")
        table = pd.DataFrame({n: f["label"].value_counts() for n, f in parts.items()})
        table = table.reindex(self.classes).fillna(0).astype(int)
        table.loc["total"] = table.sum()
        return table


def build_external_split(
    manifest: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    train_source: str = "PBC",
    test_source: str = "LMU",
    fractions: Sequence[float] = DEFAULT_FRACTIONS["all4"],
    seed: int = 0,
    min_images: int = 2,
    rebuild: bool = False,
) -> ExternalSplit:
    """Split folders for external validation (train on one source, test on the other) under
    ``out_dir``, reused while the manifest and the settings are those they were built from.

    ``internal/``: train, val and test from ``train_source`` only (stratified, duplicate-aware:
    ``test`` is the *internal* test). ``external/test.csv``: every ``test_source`` image. Both keep
    only the labels the two sources share (at least ``min_images`` each); the others are named.
    ``classes.txt`` is the same in both folders.
    """
    log = logging.getLogger(__name__)
    out_dir = Path(out_dir)
    internal, external = out_dir / "internal", out_dir / "external"
    if not isinstance(manifest, pd.DataFrame):
        manifest = pd.read_csv(manifest, keep_default_na=False)
    recipe = {
        "manifest": str(pd.util.hash_pandas_object(manifest.astype(str), index=False).sum()),
        "train_source": train_source,
        "test_source": test_source,
        "fractions": [float(f) for f in fractions],
        "seed": int(seed),
        "min_images": int(min_images),
    }
    marker = external / "classes.txt"  # written last
    if not rebuild and (internal / "classes.txt").is_file() and marker.is_file():
        if fileio.recipe_matches(marker, recipe):
            log.info(f"External-validation splits: reusing {out_dir} (same manifest and settings)")
            return ExternalSplit(internal, external, (internal / "classes.txt").read_text().split())
        log.info(f"External-validation splits: manifest or settings changed since {out_dir} was built: rebuilding")
    classes = shared_classes(manifest, (train_source, test_source), min_images)
    if len(classes) < 2:
        raise WbcError(
            f"only {len(classes)} class(es) have >= {min_images} images in both {train_source} "
            f"and {test_source}: {classes}; external validation needs at least two"
        )
    left_out = sorted(set(manifest["label"]) - set(classes))
    if left_out:
        log.info(
            f"Left out (not in both {train_source} and {test_source} with >= {min_images} images): "
            f"{', '.join(left_out)}"
        )
    kept = manifest[manifest["label"].isin(classes)]
    write_split_folder(
        split_manifest(kept[kept["source"] == train_source].reset_index(drop=True), fractions, seed), internal
    )
    fileio.write_csv_atomic(kept[kept["source"] == test_source].reset_index(drop=True), external / "test.csv")
    fileio.write_text_atomic(marker, (internal / "classes.txt").read_text())
    fileio.write_recipe(marker, recipe)
    log.info(f"External-validation splits written to {out_dir}: train on {train_source}, test on {test_source}")
    return ExternalSplit(internal, external, classes)
