"""``python -m wbc train``: train a model on a split folder and write a run folder."""
from __future__ import annotations

import argparse

MODELS = ("resnet50", "cnn1", "cnn2", "small_resnet")


def register(subparsers) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train", help="train a model on a split folder; writes model.keras, history.csv, config.json",
        description="Train a model on train.csv/val.csv of a split folder and write a run folder "
                    "(model.keras = best epoch by val_accuracy, history.csv, config.json, train.log).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--split-dir", required=True, help="folder written by `python -m wbc split`")
    p.add_argument("--model", required=True, choices=MODELS, help="architecture")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--weights", default=None,
                   help="resnet50 backbone: imagenet (default for resnet50), none, or PATH to a "
                        ".h5/.weights.h5 file; other models: none or PATH")
    p.add_argument("--image-size", type=int, default=128, help="square input size in pixels")
    p.add_argument("--epochs", type=int, default=10, help="epochs (phase 1 for resnet50)")
    p.add_argument("--fine-tune-epochs", type=int, default=0,
                   help="resnet50 phase 2: epochs with the top blocks unfrozen (BatchNorm frozen)")
    p.add_argument("--fine-tune-lr", type=float, default=1e-5, help="learning rate of phase 2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--lr-schedule", choices=["cosine"], default=None, help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up before cosine decay")
    p.add_argument("--patience", type=int, default=5, help="EarlyStopping patience on val_accuracy")
    p.add_argument("--min-epochs", type=int, default=0,
                   help="never stop early before this epoch (BatchNorm models swing early on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="switch off augmentation (rotation, flips, zoom, brightness)")
    p.add_argument("--class-weights", action="store_true", help="balanced class weights")
    p.add_argument("--reduce-lr", action="store_true", help="ReduceLROnPlateau on val_loss")
    p.add_argument("--cache", action="store_true", help="cache decoded images in memory")
    p.add_argument("--overwrite", action="store_true", help="replace a complete run at --out")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress bars")
    p.set_defaults(func=main)


def check_args(args: argparse.Namespace) -> list[str]:
    """Refuse degenerate input before TensorFlow works: learning rates that are not finite and
    positive, and a split folder that overlaps, lacks classes or has empty labels
    (``wbc.checks``). Returns the split folder's classes."""
    from wbc import checks

    checks.check_learning_rate(args.lr, "--lr")
    checks.check_learning_rate(args.fine_tune_lr, "--fine-tune-lr")
    return checks.check_split_folder(args.split_dir)


def main(args: argparse.Namespace) -> int:
    """Run the training; errors the user can fix raise WbcError (exit status 2).

    The run folder is locked while it is written (``wbc.locking``): a second ``train`` or an
    ``evaluate`` on the same folder is refused, naming this one."""
    from wbc.locking import FolderLock

    check_args(args)
    with FolderLock(args.out, "train"):
        _train(args)
    return 0


def _train(args: argparse.Namespace) -> None:
    from wbc.train import TrainConfig, train_model

    cfg = TrainConfig(model=args.model, weights=args.weights, image_size=args.image_size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, fine_tune_epochs=args.fine_tune_epochs,
                      fine_tune_lr=args.fine_tune_lr, patience=args.patience, min_epochs=args.min_epochs,
                      lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs, augment=args.augment,
                      class_weights=args.class_weights, reduce_lr=args.reduce_lr, cache=args.cache,
                      seed=args.seed)
    train_model(args.split_dir, args.out, cfg, overwrite=args.overwrite, verbose=0 if args.quiet else 1)
