"""Stratified, duplicate-aware train/val/test splits and a leakage audit.

Duplicates leak: the same cell in train and test inflates test accuracy. So images are first
joined into *groups* (``duplicate_groups``): byte-identical files (same SHA-256), near
duplicates (re-encoded or resized copies: perceptual hashes within a few bits, confirmed by
comparing small thumbnails pixel by pixel) and, in the ALL dataset, the Original and Segmented
versions of one picture. A group is then placed in one
split as a whole, class by class, with a seed (``split_manifest``). ``audit_splits`` lists
every duplicate group and where it went, any group that spans splits (a leak) and any class
missing from a split.
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

import cv2
import numpy as np
import pandas as pd

from wbc.errors import WbcError
from wbc.fileio import file_digest

SPLITS = ("train", "val", "test")
CROSS_LABEL_POLICIES = ("drop_both", "keep_one", "report")
#: Hamming distance (of 64 bits) up to which two perceptual hashes make a near-duplicate *candidate*.
PHASH_THRESHOLD = 4
#: ``pixel_distance`` below which a near-duplicate candidate is confirmed as one picture.
PIXEL_THRESHOLD = 0.4
#: Side of the grayscale thumbnails compared by ``pixel_distance``, and of the blocks it averages over.
THUMB_SIZE, THUMB_BLOCK = 32, 8
#: Least divisor (gray levels) when normalising a thumbnail: low-contrast images are not blown up.
_MIN_STD = 16.0
AUDIT_COLUMNS = ("kind", "group", "labels", "splits", "n", "paths", "action")


# ----------------------------------------------------------------------------- hashes

def phash_gray(gray: np.ndarray) -> str:
    """DCT perceptual hash of a grayscale uint8 image: 16 hex digits (64 bits).

    The image is shrunk to 32x32 (halved by a Gaussian pyramid while at least 128 px, then
    INTER_AREA: as smooth as INTER_AREA alone and several times faster), transformed with a
    2-D DCT, and the 8x8 lowest frequencies are compared with their median: one bit per
    coefficient. Coarse structure survives JPEG re-encoding, resizing and small brightness
    changes, so copies of one picture land within a few bits of each other.
    """
    while min(gray.shape[:2]) >= 128:
        gray = cv2.pyrDown(gray)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    middle = np.partition(low, (31, 32))[31:33]
    bits = low > (middle[0] + middle[1]) / 2  # the median, without np.median's overhead
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def perceptual_hash(img: np.ndarray) -> str:
    """64-bit DCT perceptual hash (16 hex digits) of an RGB or grayscale uint8 image.

    Two images whose hashes differ in at most ``PHASH_THRESHOLD`` (4) of 64 bits are
    near-duplicate *candidates*; ``pixel_distance`` then decides. Measured on the real sample
    (1,069 images, ``bench/bench_preprocess.py --scan``): a 128-px JPEG (quality 75) copy of
    an image lies 0-4 bits from it in 1,066 cases (6 bits in 3), while the closest two
    distinct images lie 8 bits apart (median split hashes always differ by an even number of
    bits). The hash alone is not enough, though: it keeps only the coarsest structure, and
    images that share a smooth background and a centred round cell (the synthetic demo
    cells, for one) collide within 4 bits although they are different pictures.
    """
    gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return phash_gray(np.ascontiguousarray(gray))


def thumbnail(img: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Normalised ``size`` x ``size`` grayscale thumbnail (float32) of an RGB or grayscale uint8 image.

    The image is shrunk like ``phash_gray`` (Gaussian pyramid, then INTER_AREA), its mean gray
    level subtracted and the result divided by its standard deviation, so a copy with other
    brightness or contrast gives about the same thumbnail. The divisor is at least 16 gray
    levels: an almost black image (some ALL Segmented ones) is not blown up into noise.
    """
    gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    gray = np.ascontiguousarray(gray)
    while min(gray.shape[:2]) >= 4 * size:
        gray = cv2.pyrDown(gray)
    small = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    return small / max(float(small.std()), _MIN_STD)


def thumbnail_distance(a: np.ndarray, b: np.ndarray, block: int = THUMB_BLOCK) -> float:
    """Distance of two ``thumbnail`` results: the largest mean absolute difference over the
    ``block`` x ``block`` squares that tile them (see ``pixel_distance``)."""
    if a.shape != b.shape or a.shape[0] % block or a.shape[1] % block:
        raise ValueError(f"thumbnails of shape {a.shape} and {b.shape} do not tile into {block}-px blocks")
    diff = np.abs(a - b)
    h, w = diff.shape
    return float(diff.reshape(h // block, block, w // block, block).mean(axis=(1, 3)).max())


def pixel_distance(img_a: np.ndarray, img_b: np.ndarray) -> float:
    """How far apart two images are, pixel by pixel: 0 for the same picture.

    Both images become 32x32 normalised grayscale thumbnails (``thumbnail``); the distance is
    the largest, over the 16 blocks of 8x8 pixels, of the mean absolute difference in the
    block (in standard deviations of the gray levels). A copy differs a little everywhere;
    a different cell, however alike in outline, differs a lot somewhere (its nucleus), and
    the largest block catches that where a mean over the whole image would dilute it.

    A near-duplicate candidate counts as one picture below ``PIXEL_THRESHOLD`` (0.4).
    Measured on the real sample (every image, against copies of itself whose hash
    stays within 4 bits) and on the demo data (``wbc.demo.generate_demo`` with seed 0 and 12
    or 40 images per class; some of the images): copies with brightness and contrast changed
    (x0.9 + 10) lie at most 0.18 from the original, half-size copies 0.17, 128-px JPEG
    (quality 75) copies 0.21 and 64-px JPEG (quality 50) copies 0.35 (ALL Segmented images,
    mostly black, and small demo cells are the hardest). Different images, among all pairs
    whose hashes differ in up to 10 bits, lie at least 0.79 apart on the real sample and
    0.43 on the demo data; the demo's different pairs within 4 bits (cells on a smooth
    background, alike in outline) at least 0.7.

    Limit: two pictures that differ only in details far below the thumbnail's scale look
    the same to it. The demo's ALL Segmented fields are such pictures (one round cell on
    black, differing in single-pixel specks), so among them the check confirms look-alikes;
    the course uses ALL Original only (``all4``), where this does not happen.
    """
    return thumbnail_distance(thumbnail(img_a), thumbnail(img_b))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


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

    from wbc.preprocess import read_image

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
                df.at[idx, "sha256"] = file_digest(path)
            except OSError as exc:
                raise WbcError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if need_phash[idx]:
            df.at[idx, "phash"] = perceptual_hash(read_image(path))
    return df


# ----------------------------------------------------------------------------- groups

class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicate_pairs(phashes: Sequence[str], threshold: int = PHASH_THRESHOLD) -> Iterator[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits.

    These are candidates only: ``confirmed_near_duplicate_pairs`` keeps the ones whose pixels
    agree. Compares all pairs with numpy in blocks (about 8 million comparisons per block), so
    memory stays bounded: tens of thousands of images take seconds.
    """
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    n = len(values)
    block = max(1, (1 << 23) // max(n, 1))
    for start in range(0, n, block):
        dist = np.bitwise_count(values[start:start + block, None] ^ values[None, start:])
        ii, jj = np.nonzero(dist <= threshold)
        ii, jj = ii + start, jj + start
        for i, j in zip(ii[jj > ii].tolist(), jj[jj > ii].tolist()):
            yield i, j


def confirmed_near_duplicate_pairs(paths: Sequence[str], phashes: Sequence[str],
                                   phash_threshold: int = PHASH_THRESHOLD,
                                   pixel_threshold: float | None = PIXEL_THRESHOLD) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, that are near duplicates: a candidate from
    ``near_duplicate_pairs`` (hashes within ``phash_threshold`` bits) whose images, read from
    ``paths``, lie less than ``pixel_threshold`` apart (``pixel_distance``).

    Only the images of candidate pairs are read, each once. ``pixel_threshold=None`` trusts
    the hashes alone (no file is read). A candidate's unreadable file raises a WbcError
    naming it.
    """
    from wbc.preprocess import read_image

    candidates = list(near_duplicate_pairs(phashes, phash_threshold))
    if pixel_threshold is None:
        return candidates
    thumbs: dict[int, np.ndarray] = {}

    def thumb(i: int) -> np.ndarray:
        if i not in thumbs:
            try:
                thumbs[i] = thumbnail(read_image(paths[i]))
            except OSError as exc:
                raise WbcError(f"{paths[i]}: cannot read ({exc.strerror or exc})") from None
        return thumbs[i]

    return [(i, j) for i, j in candidates if thumbnail_distance(thumb(i), thumb(j)) < pixel_threshold]


def duplicate_groups(manifest: pd.DataFrame, phash_threshold: int | None = PHASH_THRESHOLD, *,
                     pixel_threshold: float | None = PIXEL_THRESHOLD) -> pd.Series:
    """Group id per row (``Series`` named ``group``, aligned with ``manifest``).

    Rows share a group when they are linked, directly or through other rows, by: the same
    ``sha256``; near duplicates (``confirmed_near_duplicate_pairs``: perceptual hashes within
    ``phash_threshold`` bits, None for exact copies only, and thumbnails of the images at
    ``path`` less than ``pixel_threshold`` apart, None to trust the hashes alone); or, when
    the manifest has a ``version`` column (ALL: Original / Segmented), the same source, class
    folder and file name in another version. Hashes are computed when missing. Ids are
    numbered by each group's first path in sorted order, so they do not depend on row order.

    The pixel check matters because groups are chained: with hashes alone, pictures that
    merely look alike at 8x8 frequencies (a smooth background, a centred cell) would link
    into one group, and different cells of different classes would be kept together or
    dropped as "label ambiguous".
    """
    if manifest.empty:
        return pd.Series([], index=manifest.index, name="group", dtype=int)
    df = content_hashes(manifest) if (_missing(manifest, "sha256").any()
                                      or (phash_threshold is not None and _missing(manifest, "phash").any())) else manifest
    n = len(df)
    uf = _UnionFind(n)
    keys = [df["sha256"].astype(str).to_numpy()]
    if "version" in df.columns:
        names = df["raw_path"] if "raw_path" in df.columns else df["path"]
        folder = df["source_label"] if "source_label" in df.columns else df["label"]
        source = df["source"] if "source" in df.columns else ""
        keys.append((source.astype(str) + "|" + folder.astype(str) + "|"
                     + names.astype(str).map(os.path.basename)).to_numpy())
    for key in keys:
        first: dict[str, int] = {}
        for i, k in enumerate(key):
            uf.union(first.setdefault(k, i), i)
    if phash_threshold is not None:
        for i, j in confirmed_near_duplicate_pairs(df["path"].astype(str).tolist(), df["phash"].astype(str).tolist(),
                                                   phash_threshold, pixel_threshold):
            uf.union(i, j)
    roots = np.array([uf.find(i) for i in range(n)])
    paths = df["path"].astype(str).to_numpy()
    first_path = pd.Series(paths).groupby(roots).min()
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
        raise WbcError(f"fractions must be three non-negative numbers (train, val, test) summing to 1 "
                       f"with train > 0, got {list(fractions)}")
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
        shown = [f"row {i}: {manifest.at[i, 'path'] if 'path' in manifest.columns else '?'} "
                 f"(label {labels.at[i]!r})" for i in manifest.index[bad][:10]]
        more = f"\n  ... and {int(bad.sum()) - 10} more" if bad.sum() > 10 else ""
        raise WbcError(f"{int(bad.sum())} row(s) have an empty or unusable label (a class needs a "
                       "non-blank name on one line):\n  " + "\n  ".join(shown) + more
                       + "\nGive those images a class or remove the rows, then split again.")


def split_manifest(manifest: pd.DataFrame, fractions: Sequence[float] = (0.8, 0.12, 0.08), seed: int = 0, *,
                   cross_label: str = "drop_both",
                   phash_threshold: int | None = PHASH_THRESHOLD) -> Splits:
    """Stratified, group-aware split; returns ``{"train", "val", "test"}`` DataFrames (a ``Splits``).

    Study A used 80/12/8 (wbc10), Study B 70/15/15 (all4). Each split keeps the manifest's
    columns plus ``sha256``, ``phash`` and ``group`` (see ``duplicate_groups``); a group never
    spans splits. Within each class, groups are shuffled with ``seed`` and dealt so each split
    gets its fraction of images and every class appears in every split when it has at least
    three groups. Rows are sorted by label and path, so the same input and seed give the same
    files.

    ``cross_label``, for one image filed under several labels (PBC has one such pair):

    - ``"drop_both"`` (default): drop every copy. Which label is right is unknown, and
      keeping one would train or test on a label that is wrong half of the time; the cost is
      two images out of thousands. The dropped rows are in ``splits.dropped`` and listed by
      the audit.
    - ``"keep_one"``: keep the copies with the label of the first path in sorted order.
    - ``"report"``: keep all copies (together in one split) and only report them.
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
    parts = {name: kept[where == k].sort_values(["label", "path"], kind="stable").reset_index(drop=True)
             for k, name in enumerate(SPLITS)}
    return Splits(parts, dropped.sort_values(["label", "path"], kind="stable").reset_index(drop=True))


# ----------------------------------------------------------------------------- audit

def audit_splits(splits: dict[str, pd.DataFrame], dropped: pd.DataFrame | None = None,
                 phash_threshold: int | None = PHASH_THRESHOLD) -> pd.DataFrame:
    """One row per finding (columns ``kind, group, labels, splits, n, paths, action``).

    Kinds: ``across_splits`` (a duplicate group in more than one split: a leak),
    ``cross_label`` (one image under several labels, with what the policy did),
    ``duplicate`` (copies with one label, kept together), ``class_missing`` (a class absent
    from a non-empty split). Works on any splits: without a ``group`` column, groups are
    computed here. ``dropped`` defaults to ``splits.dropped`` (from ``split_manifest``).
    """
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
                kept_labels = sorted(set(g.loc[g['_split'] != 'dropped', 'label'].astype(str)))
                action = f"kept {', '.join(kept_labels)} in {placed[0]}; dropped {len(gone)}"
        else:
            kind = "duplicate"
            action = f"kept together in {placed[0]}" if placed else f"dropped all {len(g)} copies"
        rows.append({"kind": kind, "group": int(gid), "labels": ";".join(labels),
                     "splits": ";".join(placed + (["dropped"] if len(gone) else [])), "n": len(g),
                     "paths": ";".join(sorted(g["_shown"])), "action": action})
    kept = both[both["_split"] != "dropped"]
    all_labels = sorted(set(kept["label"].astype(str)))
    for name in SPLITS:
        present = set(kept.loc[kept["_split"] == name, "label"].astype(str))
        if not present:
            continue
        for label in all_labels:
            if label not in present:
                n_groups = kept.loc[kept["label"].astype(str) == label, "group"].nunique()
                rows.append({"kind": "class_missing", "group": -1, "labels": label, "splits": name, "n": 0,
                             "paths": "", "action": f"none: the class has only {n_groups} group(s)"})
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def class_counts(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images per class (rows) and split (columns), with totals."""
    counts = pd.DataFrame({name: splits[name]["label"].value_counts() for name in SPLITS if name in splits})
    counts = counts.fillna(0).astype(int).sort_index()
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum(axis=0)
    return counts


#: The files a split folder holds (``classes.txt`` last: its presence means "complete").
SPLIT_FILES = ("train.csv", "val.csv", "test.csv", "audit.csv", "classes.txt")


def write_split_folder(splits: dict[str, pd.DataFrame], out_dir, *,
                       phash_threshold: int | None = PHASH_THRESHOLD) -> pd.DataFrame:
    """Write ``train/val/test.csv``, ``audit.csv`` and ``classes.txt`` into ``out_dir``, as a unit.

    The files are written into a temporary folder beside ``out_dir``, which then replaces it
    (``wbc.fileio.replace_folder``: the old folder is renamed aside, the new one renamed into
    place, the old one removed), so ``out_dir`` never mixes files of two splits. Files in an
    existing ``out_dir`` that a split does not write are carried over into the new folder. The
    folder is locked while it is written (``wbc.locking``). ``classes.txt`` holds the sorted
    class names, one per line (line order = class index); an empty label is refused. Returns
    the audit.
    """
    from pathlib import Path

    from wbc.fileio import replace_folder, temporary_sibling, write_csv_atomic, write_text_atomic
    from wbc.locking import FolderLock

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
        tmp = temporary_sibling(out_dir, "new")
        carried: list[str] = []
        try:
            for name in SPLITS:
                write_csv_atomic(splits[name], tmp / f"{name}.csv")
            write_csv_atomic(audit, tmp / "audit.csv")
            write_text_atomic(tmp / "classes.txt", "".join(f"{c}\n" for c in classes))
            if out_dir.is_dir():
                for entry in sorted(out_dir.iterdir()):  # not a split's file: carried over, never lost
                    if entry.name not in SPLIT_FILES:
                        os.replace(entry, tmp / entry.name)
                        carried.append(entry.name)
            replace_folder(tmp, out_dir)
        except BaseException:
            for name in carried:  # the old folder is still in place: give its files back
                if (tmp / name).exists() or (tmp / name).is_symlink():
                    os.replace(tmp / name, out_dir / name)
            raise
        finally:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
    return audit
