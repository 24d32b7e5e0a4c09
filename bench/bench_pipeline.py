"""Benchmark: tf.data input throughput vs model training throughput, and pipeline memory.

    python bench/bench_pipeline.py [--images DIR] [--sizes 64 128] [--models small_resnet resnet50]

1. Input: images/s of one pass over ``make_dataset`` (decode + resize + augmentation +
   shuffle, streamed from disk, no cache; the models scale pixels themselves) at each size.
2. Model: training images/s of ``model.train_on_batch`` on an in-memory batch (no input cost),
   after one warm-up step that builds the graph.
3. Ratio input/model: above 1 means the input pipeline is not the bottleneck.
4. Memory: peak RSS of one pass over N and over 4N images, each in a fresh process.

Images: the PBC folder of the real sample (``$WBC_REAL_SAMPLE`` or ``--images``), else a
generated demo set. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SUFFIXES = {".jpg", ".jpeg", ".png"}


def image_table(images: str | None) -> pd.DataFrame:
    """(path, label) of the benchmark images: a folder of class folders."""
    from wbc.config import PBC_DIRNAME, real_sample_dir

    root = Path(images) if images else None
    if root is None:
        sample = real_sample_dir() or Path(__file__).resolve().parents[2] / "shared" / "real-sample"
        root = sample / PBC_DIRNAME
    if not root.is_dir():
        from wbc.demo import generate_demo

        demo = Path(tempfile.mkdtemp(prefix="wbc-bench-"))
        generate_demo(demo, per_class=40, seed=0, quirks=False)
        root = demo / PBC_DIRNAME
    rows = [
        (str(p), p.parent.name)
        for p in sorted(root.glob("*/*"))
        if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    ]
    return pd.DataFrame(rows, columns=["path", "label"])


def input_rate(df: pd.DataFrame, size: int, batch: int = 32) -> float:
    """Images/s of one streamed pass over ``df`` (training settings: shuffle + augmentation)."""
    from wbc.pipeline import split_dataset

    classes = sorted(df["label"].unique())
    ds = split_dataset(df, classes, size, batch, augment=True, shuffle=True)
    next(iter(ds))  # build the graph before timing
    t0, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n / (time.perf_counter() - t0)


def model_rate(name: str, size: int, n_classes: int, batch: int = 32, steps: int = 3) -> float:
    """Training images/s of ``name`` on one in-memory batch (input cost excluded)."""
    import keras

    from wbc.models import build_model

    model = build_model(name, n_classes, size, weights="none" if name == "resnet50" else None)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")  # raw pixels: models scale them
    y = keras.utils.to_categorical(rng.integers(0, n_classes, batch), n_classes)
    model.train_on_batch(x, y)  # warm-up: graph building
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return batch * steps / (time.perf_counter() - t0)


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_pass(csv: str, size: int) -> dict:
    """Run in a child process: RSS after the first batch, the highest RSS seen during one pass,
    and the process's lifetime peak (ru_maxrss, which includes importing TensorFlow)."""
    from wbc.pipeline import split_dataset

    df = pd.read_csv(csv)
    ds = split_dataset(df, sorted(df["label"].unique()), size, 32, shuffle=True, augment=True)
    it = iter(ds)
    n = int(next(it)[0].shape[0])
    first = highest = current_rss_mb()
    for x, _ in it:
        n += int(x.shape[0])
        highest = max(highest, current_rss_mb())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": n, "first": round(first, 1), "highest": round(highest, 1), "peak": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="folder of class folders (default: real sample PBC)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--models", nargs="+", default=["small_resnet", "resnet50"])
    parser.add_argument("--memory-size", type=int, default=64)
    parser.add_argument("--_memory_csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_csv:  # child process of the memory measurement
        print(json.dumps(memory_pass(args._memory_csv, args.memory_size)))
        return

    df = image_table(args.images)
    n_classes = df["label"].nunique()
    print(f"{len(df)} images, {n_classes} classes, from {Path(df['path'][0]).parents[1]}")
    print("\n(resnet50: phase 1, frozen ImageNet-shaped base with random weights; the cost is the same)")
    print("\n| size | model | input images/s | model training images/s | input / model |")
    print("|---:|---|---:|---:|---:|")
    for size in args.sizes:
        for name in args.models:
            fed = input_rate(df, size)
            trained = model_rate(name, size, n_classes)
            print(f"| {size} | {name} | {fed:.0f} | {trained:.1f} | {fed / trained:.1f} |", flush=True)

    print("\nPeak memory of one pass (fresh process each; 4N repeats the file list 4 times):")
    print("| images | RSS after first batch (MB) | highest RSS during the pass (MB) | process peak (MB) |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 4):
            csv = Path(tmp) / f"x{factor}.csv"
            pd.concat([df] * factor).to_csv(csv, index=False)
            out = subprocess.run(
                [sys.executable, __file__, "--_memory_csv", str(csv), "--memory-size", str(args.memory_size)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            m = json.loads(out.strip().splitlines()[-1])
            print(f"| {m['images']} | {m['first']} | {m['highest']} | {m['peak']} |", flush=True)


if __name__ == "__main__":
    main()
