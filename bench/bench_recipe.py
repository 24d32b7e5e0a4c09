"""Benchmark: end-to-end training speed of the CPU recipes (input pipeline plus model, as ``train`` runs them).

    python bench/bench_recipe.py [--images DIR] [--epochs 3] [--repeat 2]

Each recipe of ``RECIPES`` (the README's CPU recipe and the faster one) trains small_resnet with
``train_model`` on the real sample's PBC images (``$WBC_REAL_SAMPLE``), for ``--epochs`` epochs with
validation, everything written as a real run does. The recipes alternate ``--repeat`` times and the
best run of each is kept. Prints images/s (training images x epochs / seconds ``fit`` took, validation
included, as ``config.json`` records it) and the minutes one epoch over 10,000 training images
takes at that rate. Speed only: accuracy needs the full runs (README, "A CPU recipe"). Prints;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import image_table  # noqa: E402
from bench_training import write_split  # noqa: E402

#: name -> the ``train`` settings that differ (all: small_resnet, 64 px, cosine); the README's budgets differ
#: in epochs too, which changes the time per run, not the rate.
RECIPES = {
    "standard (batch 32)": dict(batch_size=32, lr=2e-3, cache=False),
    "fast (batch 32, --cache)": dict(batch_size=32, lr=2e-3, cache=True),
    "batch 64, --cache": dict(batch_size=64, lr=3e-3, cache=True),
}


def run_recipe(split: Path, out: Path, epochs: int, settings: dict) -> float:
    """Images/s of one ``train_model`` run with ``settings``."""
    import json

    from wbc.train import TrainConfig, train_model

    cfg = TrainConfig(
        model="small_resnet",
        image_size=64,
        epochs=epochs,
        lr_schedule="cosine",
        warmup_epochs=1,
        patience=epochs,
        seed=0,
        **settings,
    )
    run = train_model(split, out, cfg, verbose=0, overwrite=True)
    return float(json.loads((run / "config.json").read_text())["images_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of class folders (default: real sample PBC)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    df = image_table(args.images)
    print(f"{len(df)} images, {os.cpu_count()} cores; {args.epochs} epochs per run, best of {args.repeat}")
    best = dict.fromkeys(RECIPES, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        n_val = len(df) // 5
        split = write_split(df, Path(tmp) / "split", len(df) - n_val, n_val)
        for _ in range(args.repeat):
            for name, settings in RECIPES.items():
                best[name] = max(best[name], run_recipe(split, Path(tmp) / "run", args.epochs, settings))
    print("\n| recipe | images/s (input + model, validation included) | minutes per epoch of 10,000 images |")
    print("|---|---:|---:|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.1f} | {10_000 / rate / 60:.1f} |")
    standard = best["standard (batch 32)"]
    print(
        "\n" + ", ".join(f"{name} / standard: {rate / standard:.2f}" for name, rate in best.items() if rate != standard)
    )


if __name__ == "__main__":
    main()
