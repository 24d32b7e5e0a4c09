"""``python -m wbc split MANIFEST.csv --out DIR``: stratified, duplicate-aware splits + audit."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``split`` verb."""
    p = subparsers.add_parser(
        "split", help="stratified train/val/test split that keeps duplicates together, with a leakage audit",
        description="Write DIR/train.csv, val.csv, test.csv (manifest columns plus sha256, phash, group), "
                    "DIR/audit.csv (duplicate groups, cross-label copies, missing classes) and "
                    "DIR/classes.txt. The same manifest and seed give byte-identical files. DIR is replaced as a "
                    "unit (written beside it, then renamed into place); one run at a time writes it.")
    p.add_argument("manifest", type=Path, help="manifest CSV, usually DIR/manifest.csv from `preprocess`")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=(0.8, 0.12, 0.08),
                   help="split fractions summing to 1 (default 0.8 0.12 0.08 as Study A; Study B: 0.7 0.15 0.15)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cross-label", choices=["drop_both", "keep_one", "report"], default="drop_both",
                   help="what to do with one image filed under several labels (default drop_both)")
    p.add_argument("--phash-threshold", type=int, default=4,
                   help="max differing bits (of 64) for near duplicates; -1 for exact copies only (default 4)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Split, audit, write the files and print the per-class counts."""
    from wbc.locking import FolderLock
    from wbc.preprocess import read_manifest_csv
    from wbc.split import SPLITS, class_counts, split_manifest, write_split_folder

    manifest = read_manifest_csv(args.manifest)
    threshold = None if args.phash_threshold < 0 else args.phash_threshold
    with FolderLock(args.out, "split"):  # taken first: a second writer is told at once
        splits = split_manifest(manifest, args.fractions, args.seed, cross_label=args.cross_label,
                                phash_threshold=threshold)
        audit = write_split_folder(splits, args.out, phash_threshold=threshold)

    print(class_counts(splits).to_string())
    for kind, n in audit["kind"].value_counts().sort_index().items():
        print(f"audit: {n} {kind}")
    for row in audit[audit["kind"].isin(["across_splits", "cross_label", "class_missing"])].itertuples(index=False):
        print(f"  {row.kind} [{row.labels}] {row.paths or row.splits}: {row.action}")
    print(f"wrote {', '.join(f'{n}.csv' for n in SPLITS)}, audit.csv, classes.txt to {args.out}")
    return 0
