"""Command-line interface: ``python -m wbc VERB ...`` runs the stages without Jupyter.

One function per verb (``cmd_<verb>(args) -> int``) and its arguments in ``build_parser``.
Heavy libraries (TensorFlow) are imported inside the verbs only, so ``--help`` stays fast. The
library reports through ``logging``; ``main`` shows its messages (``config.show_logs``), prints
a ``WbcError`` as ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from wbc import __version__
from wbc.config import DATASETS, DEFAULT_FRACTIONS, data_dir_argument, show_logs
from wbc.download import DOWNLOADERS
from wbc.errors import WbcError
from wbc.images import MAX_PIXELS, MIN_SIZE, PHASH_THRESHOLD
from wbc.models import MODEL_NAMES

TENSORFLOW_VERBS = {"train", "evaluate", "predict"}
DEFAULT_CAP = 1300
#: The ``train`` options: one per ``TrainConfig`` setting (defaults from there), with its help.
TRAIN_HELP = {
    "weights": "resnet50 backbone: imagenet (default for resnet50), none, or PATH to a .h5/.weights.h5 file; "
    "other models: none or PATH",
    "image_size": "square input size in pixels",
    "epochs": "epochs (phase 1 for resnet50)",
    "batch_size": "images per batch",
    "lr": "Adam learning rate",
    "fine_tune_epochs": "resnet50 phase 2: epochs with the top blocks unfrozen (BatchNorm frozen)",
    "fine_tune_lr": "learning rate of phase 2",
    "patience": "EarlyStopping patience on val_accuracy",
    "min_epochs": "never stop early before this epoch (BatchNorm models swing early on)",
    "lr_schedule": "learning-rate schedule",
    "warmup_epochs": "linear warm-up before cosine decay",
    "augment": "switch off augmentation (rotation, flips, zoom, brightness)",
    "stain_augment": "stain augmentation: jitter the haematoxylin and eosin amounts of each training image "
    "(HED jitter, the StainJitter layer of notebook 13)",
    "class_weights": "balanced class weights",
    "reduce_lr": "ReduceLROnPlateau on val_loss",
    "cache": "cache decoded images in memory",
    "precision": "dtype policy; auto: mixed_float16 on tensor-core GPUs, mixed_bfloat16 on CPUs with bfloat16 "
    "instructions, else float32 (notebook 10)",
    "seed": "random seed",
}


# ----------------------------------------------------------------------------- data


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo data; print files per dataset, the quirks placed, and the time taken."""
    from wbc.demo import generate_demo

    if args.per_class < 1:
        raise WbcError(f"--per-class must be at least 1, got {args.per_class}")
    if args.seed < 0:
        raise WbcError(f"--seed must be zero or positive, got {args.seed}")
    start = time.perf_counter()
    written = generate_demo(
        args.out, per_class=args.per_class, seed=args.seed, quirks=not args.no_quirks, progress=True
    )
    seconds = time.perf_counter() - start
    print(f"Demo data written to {Path(args.out).resolve()} in {seconds:.1f} s ({len(written) / seconds:.0f} files/s)")
    for dataset, count in written.groupby("dataset").size().items():
        print(f"  {dataset}: {count} files")
    for quirk, group in written[written["quirk"] != ""].groupby("quirk"):
        print(f"  quirk {quirk}: " + ", ".join(f"{f}/{Path(p).name}" for f, p in zip(group["folder"], group["path"])))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download and verify; 0 when the data is usable, 1 when files are missing or unreadable."""
    from wbc.download import download_dataset, lmu_instructions

    name = args.dataset
    if args.url and name not in ("pbc", "bloodmnist"):
        raise WbcError(f"--url applies to pbc and bloodmnist only ({name} has no plain HTTPS download)")
    if args.size is not None and name != "bloodmnist":
        raise WbcError("--size applies to bloodmnist only")
    if args.verify_all and name == "bloodmnist":
        raise WbcError("--verify-all does not apply to bloodmnist (its MD5 covers every byte)")
    gb, entries = args.max_archive_gb, args.max_archive_entries
    if (gb is not None or entries is not None) and name != "pbc":
        raise WbcError(
            "--max-archive-gb and --max-archive-entries apply to pbc only (the other datasets are not zip archives)"
        )
    options: dict = {}
    if gb is not None:
        if not gb > 0:
            raise WbcError(f"--max-archive-gb must be above 0, got {gb}")
        options["max_archive_bytes"] = int(gb * 1024**3)
    if entries is not None:
        if entries < 1:
            raise WbcError(f"--max-archive-entries must be at least 1, got {entries}")
        options["max_archive_entries"] = entries
    if name in ("pbc", "bloodmnist"):
        options["url"] = args.url
    if name == "bloodmnist":
        options["size"] = args.size or 28
    else:
        options["verify_all"] = args.verify_all
    if name != "lmu":
        options["progress"] = not args.no_progress
    data_dir = data_dir_argument(args.data_dir, must_exist=False)
    if name == "lmu":
        print(lmu_instructions(data_dir))
    result = download_dataset(name, data_dir, **options)
    print(result.summary())
    return 0 if result.report is None or result.report.usable else 1


def cmd_manifest(args: argparse.Namespace) -> int:
    """Build a manifest, write it with ``_skipped.csv`` (and ``_excluded.csv``), print the counts."""
    import pandas as pd

    from wbc import merge, readers
    from wbc.fileio import display_path, is_utf8_name, write_csv_atomic

    if args.out.suffix.lower() != ".csv":
        raise WbcError(f"--out {args.out} should name a .csv file")
    if args.dataset != "wbc10" and (args.cap is not None or args.seed is not None):
        raise WbcError("--cap and --seed apply to wbc10 only")
    if args.dataset not in ("all", "all4") and args.version is not None:
        raise WbcError("--version applies to all and all4 only")
    if args.cap is not None and args.cap < 0:
        raise WbcError(f"--cap must be 0 (no cap) or positive, got {args.cap}")
    data_dir = data_dir_argument(args.data_dir)
    excluded = None
    if args.dataset == "wbc10":
        cap = DEFAULT_CAP if args.cap is None else args.cap
        manifest, skipped, excluded = merge.wbc10_from_data_dir(data_dir, cap=cap or None, seed=args.seed or 0)
    elif args.dataset == "all4":
        manifest, skipped = merge.build_all4(data_dir, version=args.version or "Original")
    else:
        extra = {"version": args.version or "both"} if args.dataset == "all" else {}
        manifest, skipped = readers.read_dataset(args.dataset, data_dir, **extra)
    # a path that is not valid UTF-8 could not be read back from the CSV: reported, not written
    bad = ~manifest["path"].astype(str).map(is_utf8_name).astype(bool) if len(manifest) else pd.Series(dtype=bool)
    if bad.any():
        moved = pd.DataFrame({"path": manifest.loc[bad, "path"].map(display_path), "reason": readers.BAD_NAME_REASON})
        manifest, skipped = manifest[~bad].reset_index(drop=True), pd.concat([skipped, moved], ignore_index=True)
    out = args.out
    write_csv_atomic(manifest, out)
    skipped_path = write_csv_atomic(skipped, out.with_name(f"{out.stem}_skipped.csv"))
    print(f"{args.dataset}: {len(manifest)} images from {data_dir} -> {out}")
    if args.dataset == "wbc10":
        print(merge.table_one(manifest).to_string(index=False))
    else:
        by = ["version", "label"] if "version" in manifest and manifest["version"].nunique() > 1 else ["label"]
        print(manifest.groupby(by).size().rename("images").to_string())
    if len(skipped):
        print(f"{len(skipped)} item(s) skipped or reported -> {skipped_path}")
        for kind, count in readers.summarise_reasons(skipped).items():
            kept = " (kept in the manifest)" if kind in ("duplicate", "unknown prefix") else ""
            print(f"  {kind}: {count}{kept}")
    else:
        print(f"nothing skipped ({skipped_path} is empty)")
    if excluded is not None:
        excluded_path = write_csv_atomic(excluded, out.with_name(f"{out.stem}_excluded.csv"))
        print(f"{len(excluded)} image(s) excluded from wbc10 -> {excluded_path}")
        for kind, count in readers.summarise_reasons(excluded).items():
            print(f"  {kind}: {count}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Run the preprocessing stage and print the counts."""
    from wbc.preprocess import preprocess_manifest, read_manifest_csv

    processed, quarantine = preprocess_manifest(
        read_manifest_csv(args.manifest),
        args.out,
        args.size,
        mode=args.mode,
        quality=args.quality,
        jobs=args.jobs,
        remove_black_band=not args.keep_black_band,
        colour=args.colour,
        crop_cell=args.crop_cell,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        max_pixels=args.max_pixels,
        min_size=args.min_size,
    )
    counts = processed.attrs["counts"]
    print(
        f"processed: {counts['processed']}  skipped (already done): {counts['skipped']}  "
        f"quarantined: {counts['quarantined']}  black-band removed: {counts['black_band']}"
    )
    for row in quarantine.itertuples(index=False):
        print(f"  quarantined {row.path}: {row.reason}")
    print(f"wrote {args.out / 'manifest.csv'} ({len(processed)} images) and {args.out / 'quarantine.csv'}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Split, audit, write the files and print the per-class counts."""
    from wbc.locking import FolderLock
    from wbc.preprocess import read_manifest_csv
    from wbc.split import SPLITS, class_counts, split_manifest, write_split_folder

    manifest = read_manifest_csv(args.manifest)
    threshold = None if args.phash_threshold < 0 else args.phash_threshold
    with FolderLock(args.out, "split"):  # taken first: a second writer is told at once
        splits = split_manifest(
            manifest, args.fractions, args.seed, cross_label=args.cross_label, phash_threshold=threshold
        )
        audit = write_split_folder(splits, args.out, phash_threshold=threshold)
    print(class_counts(splits).to_string())
    for kind, n in audit["kind"].value_counts().sort_index().items():
        print(f"audit: {n} {kind}")
    for row in audit[audit["kind"].isin(["across_splits", "cross_label", "class_missing"])].itertuples(index=False):
        print(f"  {row.kind} [{row.labels}] {row.paths or row.splits}: {row.action}")
    print(f"wrote {', '.join(f'{n}.csv' for n in SPLITS)}, audit.csv, classes.txt to {args.out}")
    return 0


# ----------------------------------------------------------------------------- models


def cmd_train(args: argparse.Namespace) -> int:
    """Refuse degenerate input before TensorFlow works (``wbc.checks``), then train under the run
    folder's lock: a second ``train`` or an ``evaluate`` on it is refused, naming this one."""
    from wbc import checks, multiworker, train
    from wbc.locking import FolderLock

    checks.check_learning_rate(args.lr, "--lr")
    checks.check_learning_rate(args.fine_tune_lr, "--fine-tune-lr")
    checks.check_split_folder(args.split_dir)
    # several machines (TF_CONFIG): only the chief writes, and locks, the shared run folder (wbc.multiworker)
    with FolderLock(args.out, "train") if multiworker.is_chief() else contextlib.nullcontext():
        cfg = train.TrainConfig(**{k: v for k, v in vars(args).items() if k in TRAIN_HELP or k == "model"})
        train.train_model(args.split_dir, args.out, cfg, overwrite=args.overwrite, verbose=0 if args.quiet else 1)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate under the run folder's lock, after ``wbc.checks`` refused a corrupt ``model.keras``
    or a split folder with other classes; print the headline figures and where the files went."""
    from wbc import checks, evaluate
    from wbc.locking import FolderLock
    from wbc.metrics import per_class_table
    from wbc.runs import read_config

    if not args.run_dir.is_dir():
        raise WbcError(f"{args.run_dir}: run folder not found (train one with `python -m wbc train ... --out DIR`)")
    with FolderLock(args.run_dir, "evaluate"):
        checks.check_run_dir(args.run_dir)
        split_dir = args.split_dir or read_config(args.run_dir).get("split_dir")
        if split_dir and Path(split_dir).is_dir():
            checks.check_split_classes(split_dir, args.run_dir)
        m = evaluate.evaluate_run(
            args.run_dir, split=args.split, split_dir=args.split_dir, n_boot=args.n_boot, seed=args.seed
        )
    ci = m["ci95"]
    print(f"{m['split']} split: {m['n_images']} images, {len(m['classes'])} classes")
    print(f"accuracy          {m['accuracy']:.4f}  (95% CI {ci['accuracy'][0]:.4f}-{ci['accuracy'][1]:.4f})")
    print(f"macro F1          {m['macro_f1']:.4f}  (95% CI {ci['macro_f1'][0]:.4f}-{ci['macro_f1'][1]:.4f})")
    for key, label in (
        ("weighted_f1", "weighted F1"),
        ("balanced_accuracy", "balanced accuracy"),
        ("loss", "loss"),
        ("auc_macro", "auc_macro"),
        ("auc_micro", "auc_micro"),
    ):
        print(f"{label:<17} {'n/a' if m[key] is None else format(m[key], '.4f')}")
    print(per_class_table(m).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for note in m["notes"]:
        print(f"note: {note}")
    print(f"wrote metrics.json, report.csv, report.md, predictions.csv, confusion_*.csv and figures to {m['out_dir']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict, print one line per image, write the CSV (and the Grad-CAM overlays)."""
    from wbc import checks, evaluate
    from wbc.fileio import write_csv_atomic

    checks.check_run_dir(args.run_dir)  # a wrong run folder or image path fails before the model loads
    files = evaluate.image_files(args.paths)
    model, config = evaluate.open_run(args.run_dir)
    table = evaluate.classify_images(model, config, files, top_k=args.top_k, skip_unreadable=args.skip_unreadable)
    k = sum(1 for c in table.columns if c.startswith("top") and c.endswith("_label"))
    for row in table.to_dict("records"):
        if row["error"]:
            print(f"{row['path']}: unreadable ({row['error']})")
        else:
            print(
                f"{row['path']}: "
                + ", ".join(f"{row[f'top{i}_label']} {row[f'top{i}_prob']:.3f}" for i in range(1, k + 1))
            )
    out = args.out or args.run_dir / "predictions" / "predictions.csv"
    write_csv_atomic(table, out)
    n_bad = int((table["error"] != "").sum())
    print(
        f"wrote {len(table) - n_bad} prediction(s) to {out}"
        + (f"; {n_bad} unreadable image(s) listed" if n_bad else "")
    )
    if args.gradcam:
        from wbc.gradcam import save_overlays

        written = save_overlays(model, config, table, args.gradcam)
        print(f"wrote {len(written)} Grad-CAM overlay(s) to {args.gradcam}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb."""
    parser = argparse.ArgumentParser(
        prog="python -m wbc", description="White-blood-cell classification: data, preprocessing, training, evaluation."
    )
    parser.add_argument("--version", action="version", version=f"wbc {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, func, help: str, description: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, **kwargs)
        p.set_defaults(func=func)
        return p

    p = verb(
        "demo",
        cmd_demo,
        "generate synthetic demo data in the PBC, LMU and ALL folder layouts",
        "Write smear-like synthetic single-cell images under DIR in the exact folder layouts and file names "
        "of the real downloads (PBC_dataset_normal_DIB/, AML-Cytomorphology_LMU/, ALL_Kaggle/), "
        "deterministic from the seed.",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write the datasets into")
    p.add_argument(
        "--per-class",
        type=int,
        default=12,
        metavar="N",
        help="images per class, PBC file-name prefix and LMU code (default 12)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument(
        "--no-quirks",
        action="store_true",
        help="leave out the real releases' quirks (junk file, duplicates, black bands)",
    )

    p = verb(
        "manifest",
        cmd_manifest,
        "list a dataset's images (path, source, label) into a CSV manifest",
        "Write the manifest CSV, <stem>_skipped.csv beside it (files skipped or reported, with reasons) and, "
        "for wbc10, <stem>_excluded.csv (rows left out by the ten-class map or the cap); print the counts.",
    )
    p.add_argument(
        "dataset",
        choices=DATASETS,
        help="pbc, lmu, all (single datasets, own labels), wbc10 (PBC+LMU, ten classes), all4 (ALL, one version)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding PBC_dataset_normal_DIB/, AML-Cytomorphology_LMU/, ALL_Kaggle/ (default: $WBC_DATA_DIR)",
    )
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    p.add_argument(
        "--cap",
        type=int,
        default=None,
        help=f"wbc10 only: at most N images per class (default {DEFAULT_CAP}; 0 = no cap)",
    )
    p.add_argument("--seed", type=int, default=None, help="wbc10 only: seed of the capped sampling (default 0)")
    p.add_argument(
        "--version",
        choices=["Original", "Segmented"],
        default=None,
        help="all/all4 only: image version (all: both by default; all4: Original by default)",
    )

    p = verb(
        "download",
        cmd_download,
        "download a dataset into the data folder and verify it",
        "Download a dataset into DIR under its standard name and verify it (checksums where the owner "
        "publishes them, else folder names, per-class counts and image decoding). Re-running is safe: an "
        "interrupted download resumes, a complete dataset is reported and left alone. 'lmu' prints how to "
        "get the TCIA collection by hand and verifies DIR/AML-Cytomorphology_LMU.",
    )
    p.add_argument("dataset", choices=list(DOWNLOADERS), help="which dataset")
    p.add_argument("--data-dir", default=None, help="data folder (default: $WBC_DATA_DIR)")
    p.add_argument("--url", default=None, help="download address overriding the registry's (pbc, bloodmnist)")
    p.add_argument(
        "--size", type=int, choices=(28, 64, 128, 224), default=None, help="BloodMNIST image size (default 28)"
    )
    p.add_argument("--verify-all", action="store_true", help="decode every image instead of a sample (pbc, all, lmu)")
    p.add_argument(
        "--max-archive-gb",
        type=float,
        default=None,
        help="pbc: refuse an archive that unpacks to more than this many GiB, checked before extracting (default 20)",
    )
    p.add_argument(
        "--max-archive-entries",
        type=int,
        default=None,
        help="pbc: refuse an archive with more entries than this, checked before extracting (default 200000)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = verb(
        "preprocess",
        cmd_preprocess,
        "read, check and resize every image of a manifest into RGB JPEGs",
        "Write DIR/images/<label>/*.jpg, DIR/manifest.csv (processed manifest) and DIR/quarantine.csv "
        "(inputs not written, with the reason). Re-running skips finished outputs; raw files are never "
        "modified. One run at a time writes DIR (a lock file beside it); DIR/preprocess.json records the "
        "settings and is written last.",
    )
    p.add_argument("manifest", type=Path, help="manifest CSV (columns path, source, source_label, sub_label, label)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; re-runs resume in it)")
    p.add_argument("--size", type=int, default=400, help="output size in pixels, square (default 400, as Study A)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument(
        "--mode",
        choices=["stretch", "pad", "crop"],
        default="stretch",
        help="stretch to the square (default), pad to square (letterbox) or centre crop",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    p.add_argument(
        "--keep-black-band",
        action="store_true",
        help="keep images with a black band on an edge (default: quarantine them, as Study A)",
    )
    p.add_argument(
        "--colour",
        choices=["clahe", "grey_world", "reinhard", "macenko"],
        default=None,
        help="optional colour normalisation (default: none); reinhard and macenko normalise the stain "
        "(an image Macenko cannot read is quarantined)",
    )
    p.add_argument(
        "--crop-cell",
        action="store_true",
        help="crop a square centred on the white cell's nucleus, the nucleus spanning half its side, before "
        "resizing; an image where no cell is found is quarantined; the box goes into crop_x, crop_y, crop_size",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what earlier runs wrote in DIR (needed when "
        "DIR holds images made with other settings: size, mode, quality, colour, crop, black-band handling)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="quarantine images with more pixels than "
        "this, read from the header before decoding (default 50000000, 50 megapixels)",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=MIN_SIZE,
        help="quarantine images smaller than this many pixels on a side instead of upscaling them (default 16)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = verb(
        "split",
        cmd_split,
        "stratified train/val/test split that keeps duplicates together, with a leakage audit",
        "Write DIR/train.csv, val.csv, test.csv (manifest columns plus sha256, phash, group), DIR/audit.csv "
        "(duplicate groups, cross-label copies, missing classes) and DIR/classes.txt. The same manifest and "
        "seed give byte-identical files. DIR is replaced as a unit (written beside it, then renamed into "
        "place); one run at a time writes it.",
    )
    p.add_argument("manifest", type=Path, help="manifest CSV, usually DIR/manifest.csv from `preprocess`")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        default=DEFAULT_FRACTIONS["wbc10"],
        help="split fractions summing to 1 (default 0.8 0.12 0.08 as Study A; Study B: 0.7 0.15 0.15)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--cross-label",
        choices=["drop_both", "keep_one", "report"],
        default="drop_both",
        help="what to do with one image filed under several labels (default drop_both)",
    )
    p.add_argument(
        "--phash-threshold",
        type=int,
        default=PHASH_THRESHOLD,
        help="max differing bits (of 64) for near duplicates; -1 for exact copies only (default 4)",
    )

    p = verb(
        "train",
        cmd_train,
        "train a model on a split folder; writes model.keras, history.csv, config.json",
        "Train a model on train.csv/val.csv of a split folder and write a run folder (model.keras = best "
        "epoch by val_accuracy, history.csv, config.json, train.log).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--split-dir", required=True, help="folder written by `python -m wbc split`")
    p.add_argument("--model", required=True, choices=MODEL_NAMES, help="architecture")
    p.add_argument("--out", required=True, help="run folder to create")
    from dataclasses import fields

    from wbc.train import PRECISIONS, TrainConfig

    for field in fields(TrainConfig):  # one option per setting, its default the TrainConfig's
        if field.name in TRAIN_HELP:
            flag, default = "--" + field.name.replace("_", "-"), field.default
            if field.name == "augment":
                p.add_argument("--no-augment", dest="augment", action="store_false", help=TRAIN_HELP["augment"])
            elif isinstance(default, bool):
                p.add_argument(flag, action="store_true", help=TRAIN_HELP[field.name])
            else:
                kind = {"weights": str, "lr_schedule": str}.get(field.name, type(default))
                p.add_argument(
                    flag,
                    type=kind,
                    default=default,
                    help=TRAIN_HELP[field.name],
                    choices={"lr_schedule": ["cosine"], "precision": PRECISIONS}.get(field.name),
                )
    p.add_argument("--overwrite", action="store_true", help="replace a complete run at --out")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress bars")

    p = verb(
        "evaluate",
        cmd_evaluate,
        "evaluate a run on a split: metrics.json, report tables, confusion matrix, ROC, errors",
        "Predict a split of the run's split folder (or of --split-dir, for external validation) and write "
        "RUN_DIR/evaluation/<split>/: metrics.json (with bootstrap 95% intervals), report.csv, report.md, "
        "confusion_counts.csv, confusion_normalised.csv, predictions.csv and the figures curves.png, "
        "confusion.png, confusion_normalised.png, roc.png, errors.png.",
    )
    p.add_argument("run_dir", type=Path, help="run folder written by `python -m wbc train`")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to evaluate (default test)")
    p.add_argument(
        "--split-dir",
        type=Path,
        default=None,
        help="another split folder with the same classes (default: the one the run was trained on)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")

    p = verb(
        "predict",
        cmd_predict,
        "classify image files or folders with a trained run (top-k labels, optional Grad-CAM)",
        "Classify images (JPEG, PNG, TIFF, BMP, ...) or every image inside folders; print the top-k classes "
        "with probabilities and write them as CSV. An unreadable image is an error naming the file, unless "
        "--skip-unreadable lists it in the CSV instead. Raw images get what the run's training images got "
        "from `python -m wbc preprocess` (crop around the cell, colour normalisation, resize mode; recorded in the run's "
        "config.json), then the model's own resize and preprocessing.",
    )
    p.add_argument("run_dir", type=Path, help="run folder written by `python -m wbc train`")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to list per image (default 3)")
    p.add_argument(
        "--out", type=Path, default=None, help="CSV of the predictions (default RUN_DIR/predictions/predictions.csv)"
    )
    p.add_argument(
        "--gradcam",
        type=Path,
        default=None,
        metavar="OUT_DIR",
        help="also write a Grad-CAM overlay of the predicted class for each image into OUT_DIR",
    )
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="list unreadable images in the CSV (column error) instead of stopping",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the verb; user errors print ``error: ...`` and return 2."""
    args = build_parser().parse_args(argv)
    show_logs()
    try:
        if args.verb in TENSORFLOW_VERBS:
            from wbc.runtime import import_tensorflow

            import_tensorflow()
        return int(args.func(args) or 0)
    except WbcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: completed work is kept; re-run the same command to resume.", file=sys.stderr)
        return 130
