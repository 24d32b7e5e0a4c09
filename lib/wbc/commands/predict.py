"""``python -m wbc predict RUN_DIR PATH...``: classify images or folders with a trained run."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``predict`` verb."""
    p = subparsers.add_parser(
        "predict", help="classify image files or folders with a trained run (top-k labels, optional Grad-CAM)",
        description="Classify images (JPEG, PNG, TIFF, BMP, ...) or every image inside folders; print the "
                    "top-k classes with probabilities and write them as CSV. An unreadable image is an "
                    "error naming the file, unless --skip-unreadable lists it in the CSV instead. Raw "
                    "images get what the run's training images got from `python -m wbc preprocess` "
                    "(colour normalisation, resize mode; recorded in the run's config.json), then the "
                    "model's own resize and preprocessing.")
    p.add_argument("run_dir", type=Path, help="run folder written by `python -m wbc train`")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list per image (default 3)")
    p.add_argument("--out", type=Path, default=None,
                   help="CSV of the predictions (default RUN_DIR/predictions/predictions.csv)")
    p.add_argument("--gradcam", type=Path, default=None, metavar="OUT_DIR",
                   help="also write a Grad-CAM overlay of the predicted class for each image into OUT_DIR")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="list unreadable images in the CSV (column error) instead of stopping")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Predict, print one line per image, write the CSV (and the overlays)."""
    from wbc.evaluate import check_run_dir, classify_images, gradcam_overlays, image_files, open_run
    from wbc.fileio import write_csv_atomic

    from wbc import checks

    check_run_dir(args.run_dir)  # a wrong run folder or image path fails before the model loads
    checks.check_run_dir(args.run_dir)  # config.json readable, model.keras intact (not "File not found")
    files = image_files(args.paths)
    model, config = open_run(args.run_dir)
    table = classify_images(model, config, files, top_k=args.top_k, skip_unreadable=args.skip_unreadable)
    k = sum(1 for c in table.columns if c.startswith("top") and c.endswith("_label"))
    for row in table.itertuples(index=False):
        row = row._asdict()
        if row["error"]:
            print(f"{row['path']}: unreadable ({row['error']})")
            continue
        tops = ", ".join(f"{row[f'top{i}_label']} {row[f'top{i}_prob']:.3f}" for i in range(1, k + 1))
        print(f"{row['path']}: {tops}")
    out = args.out or args.run_dir / "predictions" / "predictions.csv"
    write_csv_atomic(table, out)
    n_bad = int((table["error"] != "").sum())
    print(f"wrote {len(table) - n_bad} prediction(s) to {out}" + (f"; {n_bad} unreadable image(s) listed" if n_bad else ""))
    if args.gradcam:
        written = gradcam_overlays(model, config, table, args.gradcam)
        print(f"wrote {len(written)} Grad-CAM overlay(s) to {args.gradcam}")
    return 0
