"""``python -m wbc evaluate RUN_DIR``: metrics, tables and figures of a trained run on one split."""
from __future__ import annotations

import argparse
from pathlib import Path

from wbc.errors import WbcError


def register(subparsers) -> None:
    """Add the ``evaluate`` verb."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate a run on a split: metrics.json, report tables, confusion matrix, ROC, errors",
        description="Predict a split of the run's split folder (or of --split-dir, for external validation) "
                    "and write RUN_DIR/evaluation/<split>/: metrics.json (with bootstrap 95% intervals), "
                    "report.csv, report.md, confusion_counts.csv, confusion_normalised.csv, "
                    "predictions.csv and the figures curves.png, confusion.png, "
                    "confusion_normalised.png, roc.png, errors.png.")
    p.add_argument("run_dir", type=Path, help="run folder written by `python -m wbc train`")
    p.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to evaluate (default test)")
    p.add_argument("--split-dir", type=Path, default=None,
                   help="another split folder with the same classes (default: the one the run was trained on)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Evaluate, then print the headline figures and where the files went.

    The run folder is locked while evaluation writes into it (``wbc.locking``); before the model
    loads, ``wbc.checks`` refuses a corrupt ``model.keras`` and a split folder whose
    ``classes.txt`` differs from the run's classes."""
    from wbc import checks
    from wbc.locking import FolderLock

    if not args.run_dir.is_dir():
        raise WbcError(f"{args.run_dir}: run folder not found (train one with `python -m wbc train ... --out DIR`)")
    with FolderLock(args.run_dir, "evaluate"):
        checks.check_run_dir(args.run_dir)
        split_dir = args.split_dir or checks.read_run_config(args.run_dir).get("split_dir")
        if split_dir and Path(split_dir).is_dir():
            checks.check_split_classes(split_dir, args.run_dir)
        m = _evaluate(args)
    _report(m)
    return 0


def _evaluate(args: argparse.Namespace) -> dict:
    from wbc.evaluate import evaluate_run

    return evaluate_run(args.run_dir, split=args.split, split_dir=args.split_dir, n_boot=args.n_boot, seed=args.seed)


def _report(m: dict) -> None:
    from wbc.metrics import per_class_table

    ci = m["ci95"]
    print(f"{m['split']} split: {m['n_images']} images, {len(m['classes'])} classes")
    print(f"accuracy          {m['accuracy']:.4f}  (95% CI {ci['accuracy'][0]:.4f}-{ci['accuracy'][1]:.4f})")
    print(f"macro F1          {m['macro_f1']:.4f}  (95% CI {ci['macro_f1'][0]:.4f}-{ci['macro_f1'][1]:.4f})")
    print(f"weighted F1       {m['weighted_f1']:.4f}")
    print(f"balanced accuracy {m['balanced_accuracy']:.4f}")
    print(f"loss              {m['loss']:.4f}")
    for key in ("auc_macro", "auc_micro"):
        value = m[key]
        print(f"{key:<17} {'n/a' if value is None else f'{value:.4f}'}")
    print(per_class_table(m).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for note in m["notes"]:
        print(f"note: {note}")
    print(f"wrote metrics.json, report.csv, report.md, predictions.csv, confusion_*.csv and figures to {m['out_dir']}")
