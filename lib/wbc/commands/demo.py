"""``python -m wbc demo``: write the synthetic demo data in the real datasets' layouts."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from wbc.errors import WbcError


def register(subparsers) -> None:
    """Add the ``demo`` sub-parser."""
    parser = subparsers.add_parser(
        "demo", help="generate synthetic demo data in the PBC, LMU and ALL folder layouts",
        description="Write smear-like synthetic single-cell images under DIR in the exact folder "
                    "layouts and file names of the real downloads (PBC_dataset_normal_DIB/, "
                    "AML-Cytomorphology_LMU/, ALL_Kaggle/), deterministic from the seed.")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder to write the datasets into (created if missing)")
    parser.add_argument("--per-class", type=int, default=12, metavar="N",
                        help="images per class, PBC file-name prefix and LMU code (default 12)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--no-quirks", action="store_true",
                        help="leave out the real releases' quirks (junk file, duplicates, black bands)")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Generate the data and print files per dataset, the quirks placed, and the time taken."""
    if args.per_class < 1:
        raise WbcError(f"--per-class must be at least 1, got {args.per_class}")
    if args.seed < 0:
        raise WbcError(f"--seed must be zero or positive, got {args.seed}")
    from wbc.demo import generate_demo

    start = time.perf_counter()
    written = generate_demo(args.out, per_class=args.per_class, seed=args.seed,
                            quirks=not args.no_quirks, progress=True)
    seconds = time.perf_counter() - start
    print(f"Demo data written to {Path(args.out).resolve()} in {seconds:.1f} s "
          f"({len(written) / seconds:.0f} files/s)")
    for dataset, count in written.groupby("dataset").size().items():
        print(f"  {dataset}: {count} files")
    quirks = written[written["quirk"] != ""]
    for quirk, group in quirks.groupby("quirk"):
        names = ", ".join(f"{folder}/{Path(path).name}"
                          for folder, path in zip(group["folder"], group["path"]))
        print(f"  quirk {quirk}: {names}")
    return 0
