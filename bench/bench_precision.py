"""Benchmark: bfloat16 against float32 on this CPU, for speed and for accuracy.

    python bench/bench_precision.py [--images DIR] [--steps 20] [--repeat 2] [--epochs 8] [--skip-accuracy]

Speed: ``train_on_batch`` on random data (no input cost) for the CPU recipe (small_resnet, 64 px,
batch 64) and ResNet50 phase 1 (frozen backbone, random weights, 128 px, batch 32), built once under
each dtype policy; the policies alternate ``--repeat`` times and the best rate of each is kept, so a
change in machine load hits both alike. Accuracy: ``train_model`` trains small_resnet at 64 px on the
real sample's PBC images (``$WBC_REAL_SAMPLE``) with the same seed, split and epochs under each policy,
and prints the best validation accuracy of both. Also prints whether the CPU has bfloat16
instructions (``cpu_has_bfloat16``, notebook 10): without them TensorFlow emulates bfloat16 and it is
slower, which is why ``configure_device`` keeps float32 there. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import image_table  # noqa: E402
from bench_training import write_split  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")
CASES = [("small_resnet", 64, 64), ("resnet50", 128, 32)]  # model, image size, batch


def train_rate(model_name: str, size: int, batch: int, policy: str, steps: int) -> float:
    """Images/s of ``train_on_batch`` for ``steps`` steps after two warm-up steps."""
    import keras

    from wbc.models import build_model

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(model_name, 8, size, weights="none" if model_name == "resnet50" else None)
        model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        y = keras.utils.to_categorical(rng.integers(0, 8, batch), 8)
        for _ in range(2):
            model.train_on_batch(x, y)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return batch * steps / (time.perf_counter() - start)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.backend.clear_session()


def accuracy_run(split: Path, out: Path, policy: str, epochs: int) -> dict:
    """``train_model`` (small_resnet, 64 px) under ``policy``; its config.json."""
    from wbc.train import TrainConfig, train_model

    cfg = TrainConfig(
        model="small_resnet",
        image_size=64,
        epochs=epochs,
        batch_size=32,
        lr=2e-3,
        lr_schedule="cosine",
        patience=epochs,
        precision=policy,
        seed=0,
    )
    run = train_model(split, out / policy, cfg, verbose=0, overwrite=True)
    return json.loads((run / "config.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of class folders (default: real sample PBC)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()

    from wbc.lessons import cpu_has_bfloat16

    print(f"CPU bfloat16 instructions (avx512_bf16 / amx_bf16 / bf16): {cpu_has_bfloat16()}")
    print("\n| model | size | batch | float32 images/s | mixed_bfloat16 images/s | bf16 / f32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for model_name, size, batch in CASES:
        best = {policy: 0.0 for policy in POLICIES}
        for _ in range(args.repeat):
            for policy in POLICIES:
                best[policy] = max(best[policy], train_rate(model_name, size, batch, policy, args.steps))
        f32, bf16 = best["float32"], best["mixed_bfloat16"]
        print(f"| {model_name} | {size} | {batch} | {f32:.1f} | {bf16:.1f} | {bf16 / f32:.2f} |", flush=True)
    if args.skip_accuracy:
        return
    df = image_table(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        n_val = len(df) // 5
        split = write_split(df, Path(tmp) / "split", len(df) - n_val, n_val)
        print(f"\nsmall_resnet, 64 px, {args.epochs} epochs, {len(df) - n_val} train / {n_val} val images, seed 0")
        print("\n| policy | best val accuracy | at epoch | images/s |")
        print("|---|---:|---:|---:|")
        for policy in POLICIES:
            config = accuracy_run(split, Path(tmp), policy, args.epochs)
            print(
                f"| {policy} | {config['best_val_accuracy']:.3f} | {config['best_epoch']} | {config['images_per_s']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
