"""``python -m wbc preprocess MANIFEST.csv --out DIR``: resize images into RGB JPEGs."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``preprocess`` verb."""
    p = subparsers.add_parser(
        "preprocess", help="read, check and resize every image of a manifest into RGB JPEGs",
        description="Write DIR/images/<label>/*.jpg, DIR/manifest.csv (processed manifest) and "
                    "DIR/quarantine.csv (inputs not written, with the reason). Re-running skips "
                    "finished outputs; raw files are never modified. One run at a time writes DIR "
                    "(a lock file beside it); DIR/preprocess.json records the settings and is written "
                    "last.")
    p.add_argument("manifest", type=Path, help="manifest CSV (columns path, source, source_label, sub_label, label)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; re-runs resume in it)")
    p.add_argument("--size", type=int, default=400, help="output size in pixels, square (default 400, as Study A)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--mode", choices=["stretch", "pad", "crop"], default="stretch",
                   help="stretch to the square (default), pad to square (letterbox) or centre crop")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    p.add_argument("--keep-black-band", action="store_true",
                   help="keep images with a black band on an edge (default: quarantine them, as Study A)")
    p.add_argument("--colour", choices=["clahe", "grey_world"], default=None,
                   help="optional colour normalisation (default: none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what earlier runs wrote in DIR (needed when DIR holds images made with "
                        "other settings: size, mode, quality, colour, black-band handling)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="quarantine images with more pixels than this, read from the header before "
                        "decoding (default 50000000, 50 megapixels)")
    p.add_argument("--min-size", type=int, default=16,
                   help="quarantine images smaller than this many pixels on a side instead of "
                        "upscaling them (default 16)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the preprocessing stage and print the counts."""
    from wbc.preprocess import preprocess_manifest, read_manifest_csv

    manifest = read_manifest_csv(args.manifest)
    processed, quarantine = preprocess_manifest(
        manifest, args.out, args.size, mode=args.mode, quality=args.quality, jobs=args.jobs,
        remove_black_band=not args.keep_black_band, colour=args.colour, progress=not args.no_progress,
        overwrite=args.overwrite, max_pixels=args.max_pixels, min_size=args.min_size)
    counts = processed.attrs["counts"]
    print(f"processed: {counts['processed']}  skipped (already done): {counts['skipped']}  "
          f"quarantined: {counts['quarantined']}  black-band removed: {counts['black_band']}")
    for row in quarantine.itertuples(index=False):
        print(f"  quarantined {row.path}: {row.reason}")
    print(f"wrote {args.out / 'manifest.csv'} ({len(processed)} images) and {args.out / 'quarantine.csv'}")
    return 0
