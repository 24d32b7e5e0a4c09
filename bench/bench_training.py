"""Benchmark: images/s of ``train_model`` vs a bare ``model.fit`` of the same model and data.

    python bench/bench_training.py [--images DIR] [--model small_resnet] [--sizes 64 128]
                                   [--train 256] [--val 64] [--epochs 3]

Both sides build the same datasets (``make_dataset``: augmentation + shuffle on train), the
same model and the same optimizer, and train the same epochs with validation. The bare side
is ``model.fit`` with no callbacks and writes nothing; ``train_model`` adds its callbacks
(history, checkpoint, early stopping), logs, the saved model and config.json. Both are timed
end to end (datasets + build + fit + everything written), in the same process, in the order
bare, train_model, train_model, bare (so drift hits both alike) after an untimed one-epoch
warm-up (the first fit of a process pays one-off costs), and the two runs of each are averaged. Rates are given per wall-clock second and per CPU second of the process (the
latter is steadier when other work shares the machine). Overhead = 1 - train_model rate /
bare rate (target: at most 5 %). Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import image_table  # noqa: E402


def write_split(df: pd.DataFrame, folder: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A split folder with ``n_train``/``n_val`` images drawn per class in turn (stratified)."""
    shuffled = df.sample(frac=1.0, random_state=seed)
    shuffled["rank"] = shuffled.groupby("label").cumcount()
    ordered = shuffled.sort_values(["rank", "label"]).drop(columns="rank")
    folder.mkdir(parents=True, exist_ok=True)
    ordered.iloc[:n_train].to_csv(folder / "train.csv", index=False)
    ordered.iloc[n_train : n_train + n_val].to_csv(folder / "val.csv", index=False)
    classes = sorted(df["label"].unique())
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    return folder


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn(*args)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def bare_fit(split: Path, model_name: str, size: int, epochs: int, batch: int, seed: int) -> None:
    """Datasets + build + compile + ``model.fit`` (no callbacks, nothing saved)."""
    import keras

    from wbc.models import build_model
    from wbc.pipeline import load_split, read_classes, split_dataset
    from wbc.train import set_seeds

    set_seeds(seed)
    classes = read_classes(split)
    args = dict(classes=classes, image_size=size, batch_size=batch, seed=seed)
    train = split_dataset(load_split(split, "train"), augment=True, shuffle=True, **args)
    val = split_dataset(load_split(split, "val"), **args)
    model = build_model(model_name, len(classes), size)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, shuffle=False)


def project_fit(split: Path, out: Path, model_name: str, size: int, epochs: int, batch: int, seed: int) -> None:
    """``train_model`` with the same settings (everything it writes included)."""
    from wbc.train import TrainConfig, train_model

    cfg = TrainConfig(
        model=model_name, weights="none", image_size=size, epochs=epochs, batch_size=batch, seed=seed, patience=epochs
    )
    train_model(split, out, cfg, verbose=0, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of class folders (default: real sample PBC)")
    parser.add_argument("--model", default="small_resnet")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    df = image_table(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        split = write_split(df, Path(tmp) / "split", args.train, args.val)
        print(
            f"{args.model}, {args.train} train + {args.val} val images, {args.epochs} epochs, batch {args.batch_size}"
        )
        print(
            "\n| size | bare fit images/s (wall / CPU) | train_model images/s (wall / CPU) "
            "| overhead wall | overhead CPU |"
        )
        print("|---:|---:|---:|---:|---:|")
        for size in args.sizes:
            seen = args.train * args.epochs
            common = (args.model, size, args.epochs, args.batch_size, 0)
            out = Path(tmp) / f"run{size}"
            runs = {"bare": [], "ours": []}
            bare_fit(split, args.model, size, 1, args.batch_size, 0)  # warm-up, not timed
            for who in ("bare", "ours", "ours", "bare"):
                if who == "bare":
                    runs[who].append(timed(bare_fit, split, *common))
                else:
                    runs[who].append(timed(project_fit, split, out, *common))
            (bw, bc), (ow, oc) = (np.mean(runs["bare"], axis=0), np.mean(runs["ours"], axis=0))
            print(
                f"| {size} | {seen / bw:.1f} / {seen / bc:.1f} | {seen / ow:.1f} / {seen / oc:.1f} "
                f"| {100 * (1 - bw / ow):+.1f} % | {100 * (1 - bc / oc):+.1f} % |",
                flush=True,
            )


if __name__ == "__main__":
    main()
