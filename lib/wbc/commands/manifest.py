"""``python -m wbc manifest DATASET --data-dir DIR --out FILE.csv``: list a dataset's images.

Writes the manifest CSV atomically, ``<stem>_skipped.csv`` beside it (files skipped or reported
by the reader, with reasons) and, for ``wbc10``, ``<stem>_excluded.csv`` (rows left out by the
ten-class map or the cap). Prints per-label counts (Table I with per-source counts for wbc10).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wbc.errors import WbcError

if TYPE_CHECKING:
    import pandas as pd

DATASETS = ["pbc", "lmu", "all", "wbc10", "all4"]
DEFAULT_CAP = 1300


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``manifest`` verb."""
    parser = subparsers.add_parser(
        "manifest", help="list a dataset's images (path, source, label) into a CSV manifest",
        description=__doc__)
    parser.add_argument("dataset", choices=DATASETS,
                        help="pbc, lmu, all (single datasets, own labels), wbc10 (PBC+LMU, ten classes), "
                             "all4 (ALL, one version)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding PBC_dataset_normal_DIB/, AML-Cytomorphology_LMU/, ALL_Kaggle/ "
                             "(default: $WBC_DATA_DIR)")
    parser.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    parser.add_argument("--cap", type=int, default=None,
                        help=f"wbc10 only: at most N images per class (default {DEFAULT_CAP}; 0 = no cap)")
    parser.add_argument("--seed", type=int, default=None, help="wbc10 only: seed of the capped sampling (default 0)")
    parser.add_argument("--version", choices=["Original", "Segmented"], default=None,
                        help="all/all4 only: image version (all: both by default; all4: Original by default)")
    parser.set_defaults(func=main)


def _data_dir(args: argparse.Namespace) -> Path:
    from wbc.config import data_dir_argument

    return data_dir_argument(args.data_dir)


def _check_args(args: argparse.Namespace) -> None:
    if args.out.suffix.lower() != ".csv":
        raise WbcError(f"--out {args.out} should name a .csv file")
    if args.dataset != "wbc10" and (args.cap is not None or args.seed is not None):
        raise WbcError("--cap and --seed apply to wbc10 only")
    if args.dataset not in ("all", "all4") and args.version is not None:
        raise WbcError("--version applies to all and all4 only")
    if args.cap is not None and args.cap < 0:
        raise WbcError(f"--cap must be 0 (no cap) or positive, got {args.cap}")


def build(args: argparse.Namespace, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The manifest, skipped report and (wbc10 only) excluded rows asked for by ``args``."""
    from wbc import merge, readers

    if args.dataset == "wbc10":
        cap = DEFAULT_CAP if args.cap is None else args.cap
        return merge.wbc10_from_data_dir(data_dir, cap=cap or None, seed=args.seed or 0)
    if args.dataset == "all4":
        manifest, skipped = merge.build_all4(data_dir, version=args.version or "Original")
        return manifest, skipped, None
    kwargs = {"version": args.version or "both"} if args.dataset == "all" else {}
    manifest, skipped = readers.read_dataset(args.dataset, data_dir, **kwargs)
    return manifest, skipped, None


def _unwritable_names(manifest: pd.DataFrame, skipped: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move rows whose path is not valid UTF-8 (it could not be written into the CSV and read
    back as the same path) from the manifest to the skipped report, shown with ``\\xNN``."""
    import pandas as pd

    from wbc.fileio import display_path, is_utf8_name
    from wbc.readers import BAD_NAME_REASON

    bad = ~manifest["path"].astype(str).map(is_utf8_name).astype(bool) if len(manifest) else None
    if bad is None or not bad.any():
        return manifest, skipped
    moved = pd.DataFrame({"path": manifest.loc[bad, "path"].map(display_path), "reason": BAD_NAME_REASON})
    return manifest[~bad].reset_index(drop=True), pd.concat([skipped, moved], ignore_index=True)


def main(args: argparse.Namespace) -> int:
    """Build the manifest, write the CSVs, print the counts."""
    from wbc.fileio import write_csv_atomic
    from wbc.merge import table_one
    from wbc.readers import summarise_reasons

    _check_args(args)
    data_dir = _data_dir(args)
    manifest, skipped, excluded = build(args, data_dir)
    manifest, skipped = _unwritable_names(manifest, skipped)
    out = args.out
    write_csv_atomic(manifest, out)
    skipped_path = write_csv_atomic(skipped, out.with_name(f"{out.stem}_skipped.csv"))
    print(f"{args.dataset}: {len(manifest)} images from {data_dir} -> {out}")
    if args.dataset == "wbc10":
        print(table_one(manifest).to_string(index=False))
    else:
        by = ["version", "label"] if "version" in manifest and manifest["version"].nunique() > 1 else ["label"]
        print(manifest.groupby(by).size().rename("images").to_string())
    kinds = summarise_reasons(skipped)
    if len(skipped):
        print(f"{len(skipped)} item(s) skipped or reported -> {skipped_path}")
        for kind, count in kinds.items():
            kept = " (kept in the manifest)" if kind in ("duplicate", "unknown prefix") else ""
            print(f"  {kind}: {count}{kept}")
    else:
        print(f"nothing skipped ({skipped_path} is empty)")
    if excluded is not None:
        excluded_path = write_csv_atomic(excluded, out.with_name(f"{out.stem}_excluded.csv"))
        print(f"{len(excluded)} image(s) excluded from wbc10 -> {excluded_path}")
        for kind, count in summarise_reasons(excluded).items():
            print(f"  {kind}: {count}")
    return 0
